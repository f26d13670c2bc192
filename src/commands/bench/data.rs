//! `pipe bench data`: the data stages' throughput (ingest + split + hdf5, cold) and the
//! no-op re-run, over a generated Tiny-ImageNet tree of 64x64 JPEGs.

use std::path::Path;

use anyhow::Result;

use super::{count_files, manifest, Pipe, Scratch};
use crate::data::synthetic;

/// `pipe bench data`: generate a Tiny-ImageNet-shaped tree of 64x64 JPEGs (or reuse the
/// one in `keep`), time a cold `pipe run` (ingest + split + hdf5) and then no-op re-runs,
/// each as a separate process.
pub fn bench_data(
    classes: usize,
    per_class: usize,
    val_per_class: usize,
    keep: Option<&Path>,
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
    let _ = std::fs::remove_dir_all(pipe.project.join(".pipe"));
    // The first run reads files the generator just wrote (warm cache), as a re-run would.
    let cold = pipe.run(&["run", "bench", "--json"])?.0;
    let mut noop = Vec::new();
    for _ in 0..5 {
        noop.push(pipe.run(&["run", "bench", "--json"])?.0);
    }
    noop.sort_by(|a, b| a.total_cmp(b));
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| tree | {files} files, {images} JPEGs 64x64, {classes} classes |");
    println!("| threads | {} |", rayon::current_num_threads());
    println!("| first run (ingest+split+hdf5) | {cold:.2} s |");
    println!("| throughput | {:.0} images/s |", images as f64 / cold);
    println!(
        "| no-op re-run (median of 5, whole process) | {:.3} s (min {:.3}, max {:.3}) |",
        noop[2], noop[0], noop[4]
    );
    Ok(())
}
