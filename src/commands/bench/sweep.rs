//! `pipe bench sweep`: planning a large grid over the demo pipeline.

use anyhow::Result;

use super::{manifest, median, Pipe, Scratch};

/// `pipe bench sweep`: a grid of `values`³ points over the demo pipeline (`train.lr` x
/// `drop.lr` x `train.batch_size`), its data stages run once so that every key can be
/// computed, then `pipe run <grid> --dry-run --json` timed as whole processes (median of
/// `rounds`), checking that every stage of every point is planned: by its key where its
/// inputs are stored, else by its recipe.
pub fn bench_sweep(values: usize, rounds: usize) -> Result<()> {
    anyhow::ensure!(values >= 1, "--values must be at least 1");
    let rounds = rounds.max(1);
    let points = values.pow(3);
    let scratch = Scratch::new()?;
    let pipe = Pipe::in_project(&scratch.dir.join("project"))?;
    pipe.write("demo.toml", include_str!("../../../pipelines/demo.toml"))?;
    let axis = |f: &dyn Fn(usize) -> String| (1..=values).map(f).collect::<Vec<_>>().join(", ");
    pipe.write(
        "grid.toml",
        &manifest(
            "grid.toml",
            &[
                ("POINTS", points.to_string()),
                ("TRAIN_LR", axis(&|i| format!("{i}e-3"))),
                ("DROP_LR", axis(&|i| format!("{i}e-4"))),
                ("BATCH", axis(&|i| (8 * i).to_string())),
            ],
        ),
    )?;
    eprintln!("running the demo's data stages once...");
    pipe.run(&["run", "demo", "--until", "hdf5"])?;
    let mut times = Vec::new();
    let mut plan = serde_json::Value::Null;
    for _ in 0..rounds {
        let (secs, out) = pipe.run(&["run", "grid", "--dry-run", "--json"])?;
        times.push(secs);
        plan = serde_json::from_slice(&out)?;
    }
    let mut shows = Vec::new();
    for _ in 0..rounds {
        shows.push(pipe.run(&["show", "grid", "--csv"])?.0);
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
