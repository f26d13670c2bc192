//! `pipe bench train --recipes`: what each training recipe feature adds to a native CPU
//! step of one network, in one process, the variants in rotating order each round:
//! label smoothing, mixup, CutMix, cutout, the weights' moving average, AdamW and SGD's
//! decoupled decay, and all of them together, each against the plain SGD step.
//!
//! Each variant's step is the whole of what training adds per step: the batch copied (as
//! a training batch is made), mixed or cut in the step's own thread (training does it on
//! the prefetch thread, so this counts it in full), the step, and the moving average.

use std::time::Instant;

use anyhow::Result;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{batch_of, machine_line, median, network};
use crate::backend::{BackendKind, DeviceKind, Model, Optimizer, Targets};
use crate::manifest::{CutoutConfig, MixConfig};
use crate::stages::batches::{cutout, mix_batch};

/// One variant of the step.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    smoothing: f64,
    mixup: Option<MixConfig>,
    cutmix: Option<MixConfig>,
    cutout: Option<CutoutConfig>,
    ema: Option<f64>,
    optimizer: fn() -> Optimizer,
}

fn sgd() -> Optimizer {
    Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.0,
    }
}

fn sgdw() -> Optimizer {
    Optimizer::Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 5e-4,
    }
}

fn adam() -> Optimizer {
    Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-7,
    }
}

fn adamw() -> Optimizer {
    Optimizer::Adamw {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.05,
    }
}

const PLAIN: Variant = Variant {
    name: "plain SGD",
    smoothing: 0.0,
    mixup: None,
    cutmix: None,
    cutout: None,
    ema: None,
    optimizer: sgd,
};

fn variants() -> Vec<Variant> {
    vec![
        PLAIN,
        Variant {
            name: "label_smoothing = 0.1",
            smoothing: 0.1,
            ..PLAIN
        },
        Variant {
            name: "mixup = { alpha = 0.2 }",
            mixup: Some(MixConfig { alpha: 0.2 }),
            ..PLAIN
        },
        Variant {
            name: "cutmix = { alpha = 1.0 }",
            cutmix: Some(MixConfig { alpha: 1.0 }),
            ..PLAIN
        },
        Variant {
            name: "cutout = { size = 8 }",
            cutout: Some(CutoutConfig { size: 8, p: 1.0 }),
            ..PLAIN
        },
        Variant {
            name: "ema = { decay = 0.999 }",
            ema: Some(0.999),
            ..PLAIN
        },
        Variant {
            name: "SGD, decoupled_weight_decay",
            optimizer: sgdw,
            ..PLAIN
        },
        Variant {
            name: "Adam",
            optimizer: adam,
            ..PLAIN
        },
        Variant {
            name: "AdamW",
            optimizer: adamw,
            ..PLAIN
        },
        Variant {
            name: "all: AdamW, smoothing, mixup, cutout, EMA",
            smoothing: 0.1,
            mixup: Some(MixConfig { alpha: 0.2 }),
            cutout: Some(CutoutConfig { size: 8, p: 1.0 }),
            ema: Some(0.999),
            optimizer: adamw,
            ..PLAIN
        },
    ]
}

/// Time `steps` steps of `v` on `model` (after one untimed step): seconds per step.
fn time_variant(
    model: &mut dyn Model,
    v: &Variant,
    (x, y): (&[f32], &[i64]),
    side: usize,
    steps: usize,
    round: u64,
) -> Result<f64> {
    let opt = (v.optimizer)();
    let mut rng = ChaCha8Rng::seed_from_u64(round);
    let mut seconds = 0.0;
    for s in 0..=steps {
        let t = Instant::now();
        let mut batch = x.to_vec();
        if let Some(c) = v.cutout {
            let px = side * side * 3;
            for img in batch.chunks_exact_mut(px) {
                cutout(img, side, side, c, &mut rng);
            }
        }
        let mix = mix_batch(
            &mut batch,
            y,
            (side, side),
            v.mixup,
            v.cutmix,
            round,
            0,
            s as u64,
        );
        let targets = Targets {
            labels: y,
            mix: mix.as_ref().map(|(o, l)| (o.as_slice(), *l)),
            smoothing: v.smoothing,
        };
        model.train_step_targets(&batch, &targets, &opt, 1e-3, s as u64)?;
        if let Some(d) = v.ema {
            model.ema_update(d)?;
        }
        if s > 0 {
            seconds += t.elapsed().as_secs_f64();
        }
    }
    Ok(seconds / steps as f64)
}

/// `pipe bench train --recipes`: a Markdown table of each variant's median step time and
/// its ratio to the plain step measured in the same round.
pub fn bench_recipes(net: &str, batch: usize, steps: usize, rounds: usize) -> Result<()> {
    let (g, side) = network(net)?;
    let classes = g.infer()?.last().map_or(1, |i| i.shape.numel());
    let (x, y) = batch_of(batch, side, classes);
    let vs = variants();
    let mut models: Vec<Box<dyn Model>> = vs
        .iter()
        .map(|_| crate::backend::build_with(&g, 0, DeviceKind::Cpu, BackendKind::Native))
        .collect::<Result<_>>()?;
    let mut secs = vec![Vec::new(); vs.len()];
    let mut ratios = vec![Vec::new(); vs.len()];
    for round in 0..rounds {
        // Rotate the order so no variant always runs first (or after the same one).
        let mut this = vec![0.0; vs.len()];
        for k in 0..vs.len() {
            let i = (k + round) % vs.len();
            eprintln!("round {}/{rounds}: {}", round + 1, vs[i].name);
            this[i] = time_variant(
                models[i].as_mut(),
                &vs[i],
                (&x, &y),
                side,
                steps,
                round as u64,
            )?;
        }
        for i in 0..vs.len() {
            secs[i].push(this[i]);
            ratios[i].push(this[i] / this[0]);
        }
    }
    println!("{}", machine_line());
    println!(
        "\n`pipe bench train --recipes --network {net} --batch {batch} --steps {steps} --rounds {rounds}` (native CPU, {} threads)\n",
        rayon::current_num_threads()
    );
    println!("| variant | median ms/step | images/s | step time vs plain SGD (median of rounds) |");
    println!("|---|---|---|---|");
    for (i, v) in vs.iter().enumerate() {
        let s = median(secs[i].clone());
        println!(
            "| {} | {:.1} | {:.0} | {:+.1} % |",
            v.name,
            1e3 * s,
            batch as f64 / s,
            100.0 * (median(ratios[i].clone()) - 1.0)
        );
    }
    Ok(())
}
