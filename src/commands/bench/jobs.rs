//! `pipe bench jobs`: a sweep of 8 points run in one process and as `-j N` workers.

use std::collections::BTreeMap;

use anyhow::Result;

use super::{machine_line, manifest, median, Pipe, Scratch};

/// Every point's stages with their artifacts, from `pipe run SWEEP --json`.
fn artifacts(run: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in run["points"].as_array().into_iter().flatten() {
        for s in p[2].as_array().into_iter().flatten() {
            out.insert(
                format!(
                    "{}:{}",
                    p[0].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or("")
                ),
                s["output"].as_str().unwrap_or("").to_string(),
            );
        }
    }
    out
}

/// `pipe bench jobs`: the 8-point sweep of `benches/manifests/jobs.toml` (a small network
/// on generated 32x32 images, `epochs` epochs of `per_class` images per class), on a fresh
/// store each time, three ways in rotating order over `rounds` rounds: `pipe run jobs` in
/// one process; `-j N` splitting the cores between the workers; and `-j N` with every
/// worker a pool of every core (as before the split). Median wall times and ratios. All
/// must make the same artifacts, bit for bit, or the benchmark fails.
pub fn bench_jobs(jobs: usize, rounds: usize, per_class: usize, epochs: usize) -> Result<()> {
    anyhow::ensure!(
        jobs >= 2,
        "-j must be at least 2 to compare with one process"
    );
    let rounds = rounds.max(1);
    let scratch = Scratch::new()?;
    let project = scratch.dir.join("project");
    let pipe = Pipe::in_project(&project)?;
    pipe.write(
        "jobs.toml",
        &manifest(
            "jobs.toml",
            &[
                ("PER_CLASS", per_class.to_string()),
                ("EPOCHS", epochs.to_string()),
            ],
        ),
    )?;
    let j = jobs.to_string();
    let cores = rayon::current_num_threads();
    // (label, -j, RAYON_NUM_THREADS): one process; -j N splitting the cores; and -j N as
    // it was before the split, each worker a pool of every core (the parent's pool made
    // N times the cores, so that each worker's share is all of them).
    let oversubscribed = (cores * jobs).to_string();
    let modes: [(&str, bool, Option<&str>); 3] = [
        ("one process", false, None),
        ("-j split", true, None),
        ("-j every core each", true, Some(oversubscribed.as_str())),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut reference: Option<BTreeMap<String, String>> = None;
    for round in 0..rounds {
        for k in 0..modes.len() {
            let m = (k + round) % modes.len();
            let (label, parallel, threads) = modes[m];
            let _ = std::fs::remove_dir_all(project.join(".pipe"));
            let args: Vec<&str> = match parallel {
                true => vec!["run", "jobs", "-j", &j],
                false => vec!["run", "jobs"],
            };
            let env: Vec<(&str, &str)> = threads
                .map(|t| ("RAYON_NUM_THREADS", t))
                .into_iter()
                .collect();
            let (secs, _) = pipe.run_with(&args, &env)?;
            eprintln!("round {}: {label}: {secs:.2} s", round + 1);
            let (_, out) = pipe.run(&["run", "jobs", "--json"])?;
            let made = artifacts(&serde_json::from_slice(&out)?);
            anyhow::ensure!(
                made.len() == 8 * 4,
                "expected 8 points of 4 stages: {made:?}"
            );
            match &reference {
                None => reference = Some(made),
                Some(r) => anyhow::ensure!(
                    *r == made,
                    "{label} made other artifacts than the runs before it"
                ),
            }
            times[m].push(secs);
        }
    }
    let [a, b, c]: [f64; 3] = [0, 1, 2].map(|i| median(times[i].clone()));
    println!("| measurement | value |");
    println!("|---|---|");
    println!("| machine | {} |", machine_line());
    println!("| sweep | 8 points (4 lr x 2 batch sizes), {per_class} x 10 images of 32x32, {epochs} epoch(s), evaluate; fresh store each run |");
    println!("| `pipe run jobs` (one process, {cores} threads), median of {rounds} | {a:.2} s |");
    println!("| `pipe run jobs -j {jobs}`, each worker its share of the {cores} threads, median of {rounds} | {b:.2} s ({:.2}x one process) |", a / b);
    println!("| `RAYON_NUM_THREADS={oversubscribed} pipe run jobs -j {jobs}`: each worker {cores} threads, as before the split, median of {rounds} | {c:.2} s ({:.2}x one process) |", a / c);
    println!("| artifacts | the same, bit for bit, in every run |");
    Ok(())
}
