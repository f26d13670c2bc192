//! `pipe bench parity`: one MiniGoogLeNet step of each engine from the same weights on the
//! same batch, compared with the native CPU engine.

use anyhow::Result;

use super::{batch_of, network};
use crate::backend::{BackendKind, DeviceKind, Optimizer};

/// `pipe bench parity`: one MiniGoogLeNet SGD step and one Adam step from the same
/// weights on the same batch, on native-CPU (the reference), native-CUDA and dfdx-CUDA;
/// compares the losses and the updated weights. Engines this build or machine lacks are
/// listed as unavailable; any available one off by more than 1e-3 relative fails.
pub fn bench_parity(batch: usize) -> Result<()> {
    let (g, side) = network("mini")?;
    let (x, y) = batch_of(batch, side, 10);
    let engines = [
        ("native CPU", BackendKind::Native, DeviceKind::Cpu),
        ("native CUDA", BackendKind::Native, DeviceKind::Cuda),
        ("dfdx CUDA", BackendKind::Dfdx, DeviceKind::Cuda),
    ];
    let optimizers = [
        Optimizer::Sgd {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
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
            Optimizer::Adamw { .. } => "AdamW",
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
