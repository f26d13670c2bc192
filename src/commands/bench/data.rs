//! `pipe bench data`: the data stages' throughput (ingest + split + hdf5, cold) and the
//! no-op re-run (walking, and with `pipe watch` serving the store), over a generated
//! Tiny-ImageNet tree of 64x64 JPEGs.

use std::path::Path;

use anyhow::Result;

use super::{count_files, manifest, Pipe, Scratch};
use crate::data::synthetic;

/// `pipe bench data`: generate a Tiny-ImageNet-shaped tree of 64x64 JPEGs (or reuse the
/// one in `keep`), time a cold `pipe run` (ingest + split + hdf5) and then no-op re-runs,
/// each as a separate process. With `dvc` (a `dvc` executable), the same tree is also a
/// DVC project (`dvc add` of a hard-linked copy, cache by hard links), and each no-op round
/// runs `dvc status` beside `pipe run`, in turn.
pub fn bench_data(
    classes: usize,
    per_class: usize,
    val_per_class: usize,
    keep: Option<&Path>,
    dvc: Option<&Path>,
    cold_runs: usize,
) -> Result<()> {
    let mut scratch = Scratch::new()?;
    let base = match keep {
        Some(k) => {
            scratch.keep = true;
            k.to_path_buf()
        }
        None => scratch.dir.clone(),
    };
    let root = base.join("tiny-imagenet");
    let images = classes * (per_class + val_per_class);
    if !root.join("wnids.txt").is_file() {
        eprintln!("generating {images} images...");
        synthetic::write_tiny_imagenet(&root, classes, per_class, val_per_class, 64, 1)?;
    }
    let files = count_files(&root)?;
    // Before pipe's first run: hard-linking the tree changes its files' ctimes.
    let dvc_project = match dvc {
        Some(exe) => Some(dvc_project(exe, &base, &root)?),
        None => None,
    };
    let pipe = Pipe::in_project(&base.join("project"))?;
    pipe.write(
        "bench.toml",
        &manifest(
            "data.toml",
            &[
                ("ROOT", root.display().to_string()),
                ("TEST_PER_CLASS", (per_class / 10).max(1).to_string()),
            ],
        ),
    )?;
    // Each cold run starts from an empty store; the files are in the page cache (the
    // generator just wrote them, or the run before read them), as on a re-run.
    let mut colds = Vec::new();
    for _ in 0..cold_runs {
        let _ = std::fs::remove_dir_all(pipe.project.join(".pipe"));
        colds.push(pipe.run(&["run", "bench", "--json"])?.0);
    }
    let cold = super::median(colds.clone());
    colds.sort_by(|a, b| a.total_cmp(b));
    let mut noop = Vec::new();
    let (mut status, mut ratios) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let ours = pipe.run(&["run", "bench", "--json"])?.0;
        noop.push(ours);
        if let (Some(exe), Some(dir)) = (dvc, &dvc_project) {
            let theirs = dvc_status(exe, dir)?;
            status.push(theirs);
            ratios.push(theirs / ours);
        }
    }
    noop.sort_by(|a, b| a.total_cmp(b));
    // The same no-op with `pipe watch` serving the store: one run to give it the folder
    // (a walk), then five on its word, each in turn with `dvc status`.
    let (mut watched, mut watched_ratios) = (Vec::new(), Vec::new());
    {
        let watcher = Watcher::start(&pipe)?;
        let (_, said) = pipe.run_noted(&["run", "bench"])?;
        anyhow::ensure!(
            !said.contains(WATCHED),
            "the first run under `pipe watch` did not walk: {said}"
        );
        for _ in 0..5 {
            let (ours, said) = pipe.run_noted(&["run", "bench"])?;
            anyhow::ensure!(
                said.contains(WATCHED),
                "a no-op under `pipe watch` walked the tree: {said}"
            );
            watched.push(ours);
            if let (Some(exe), Some(dir)) = (dvc, &dvc_project) {
                watched_ratios.push(dvc_status(exe, dir)? / ours);
            }
        }
        drop(watcher);
    }
    watched.sort_by(|a, b| a.total_cmp(b));
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| tree | {files} files, {images} JPEGs 64x64, {classes} classes |");
    println!("| threads | {} |", rayon::current_num_threads());
    println!(
        "| cold run (ingest+split+hdf5, empty store), median of {} | {cold:.2} s (min {:.2}, max {:.2}) |",
        colds.len(),
        colds[0],
        colds[colds.len() - 1]
    );
    println!(
        "| throughput (median run) | {:.0} images/s (best run {:.0}) |",
        images as f64 / cold,
        images as f64 / colds[0]
    );
    println!(
        "| no-op re-run (median of 5, whole process) | {:.3} s (min {:.3}, max {:.3}) |",
        noop[2], noop[0], noop[4]
    );
    if let Some(exe) = dvc {
        let version = std::process::Command::new(exe)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let (s, r) = (super::median(status.clone()), super::median(ratios));
        status.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| `dvc status` (DVC {version}), same tree, in turn with each no-op | {s:.3} s (min {:.3}, max {:.3}) |",
            status[0], status[4]
        );
        println!("| `dvc status` / pipe no-op (median of the 5 rounds' ratios) | {r:.1}x |");
    }
    println!(
        "| no-op re-run under `pipe watch` (median of 5, whole process) | {:.3} s (min {:.3}, max {:.3}) |",
        watched[2], watched[0], watched[4]
    );
    if dvc.is_some() {
        println!(
            "| `dvc status` / pipe no-op under `pipe watch` (median of the 5 rounds' ratios) | {:.1}x |",
            super::median(watched_ratios)
        );
    }
    Ok(())
}

/// What a run says of a dataset folder it took on the watcher's word.
const WATCHED: &str = "no change since the last run (pipe watch)";

/// `pipe watch` serving the bench project's store; stopped when dropped.
struct Watcher(std::process::Child);

impl Watcher {
    fn start(pipe: &Pipe) -> Result<Watcher> {
        let store = std::path::absolute(pipe.project.join(".pipe"))?;
        let sock = crate::engine::fswatch::socket_path(&store);
        let mut child = pipe
            .command(&["watch"])
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let t = std::time::Instant::now();
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if let Some(status) = child.try_wait()? {
                let mut said = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut said);
                }
                anyhow::bail!("`pipe watch` stopped ({status}): {said}");
            }
            anyhow::ensure!(
                t.elapsed().as_secs() < 30,
                "`pipe watch` did not answer on {}",
                sock.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(Watcher(child))
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DVC project over a hard-linked copy of `root` in `base/dvc` (made once, kept with
/// `--keep`): `dvc init --no-scm`, hard-link cache, `dvc add`.
fn dvc_project(exe: &Path, base: &Path, root: &Path) -> Result<std::path::PathBuf> {
    let dir = base.join("dvc");
    let name = root.file_name().unwrap_or_default();
    if dir
        .join(format!("{}.dvc", name.to_string_lossy()))
        .is_file()
    {
        return Ok(dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<()> {
        let o = cmd.current_dir(&dir).output()?;
        if !o.status.success() {
            anyhow::bail!("{what} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    run(
        std::process::Command::new("cp")
            .arg("-al")
            .arg(root)
            .arg(dir.join(name)),
        "cp -al",
    )?;
    run(
        std::process::Command::new(exe).args(["init", "--no-scm", "-q"]),
        "dvc init",
    )?;
    run(
        std::process::Command::new(exe).args(["config", "cache.type", "hardlink"]),
        "dvc config",
    )?;
    eprintln!("dvc add over {} (once)...", root.display());
    run(
        std::process::Command::new(exe).arg("add").arg(name),
        "dvc add",
    )?;
    Ok(dir)
}

/// Seconds one `dvc status` takes in `dir` (whole process); it must say all is up to date.
fn dvc_status(exe: &Path, dir: &Path) -> Result<f64> {
    let t = std::time::Instant::now();
    let o = std::process::Command::new(exe)
        .arg("status")
        .current_dir(dir)
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    let said = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() || !said.contains("up to date") {
        anyhow::bail!(
            "dvc status did not find the tree unchanged: {said}{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(secs)
}
