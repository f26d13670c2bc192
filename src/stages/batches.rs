//! Batches: a split's images held in memory, the mean subtracted from them, and the
//! augmented, normalised batches a training step or a prediction takes, prepared on a
//! worker thread one or two ahead. Every random draw is seeded from (seed, purpose,
//! epoch, index), so a batch is the same whatever ran before it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::backend::NamedTensor;
use crate::data::{augment, h5};
use crate::manifest::{AugmentConfig, MeanKind};

/// A seed for one purpose (`shuffle`, `augment`, `dropout`) of one epoch and item.
pub(crate) fn derive_seed(seed: u64, what: &str, a: u64, b: u64) -> u64 {
    let h = blake3::hash(
        &[
            seed.to_le_bytes().as_slice(),
            what.as_bytes(),
            &a.to_le_bytes(),
            &b.to_le_bytes(),
        ]
        .concat(),
    );
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// A split held in memory.
pub(crate) struct Split {
    pub(crate) n: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) images: Vec<u8>,
    pub(crate) labels: Vec<i64>,
}

pub(crate) fn load_split(data: &Path, split: &str) -> Result<Split> {
    let path = data.join(format!("{split}.h5"));
    if !path.is_file() {
        let have: Vec<String> = std::fs::read_dir(data)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".h5")
                    .map(|s| s.to_string())
            })
            .collect();
        bail!(
            "the data has no split `{split}` (it has: {})",
            have.join(", ")
        );
    }
    let d = h5::read_split(&path)?;
    Ok(Split {
        n: d.shape[0],
        h: d.shape[1],
        w: d.shape[2],
        images: d.images,
        labels: d.labels,
    })
}

/// What is subtracted from every input pixel: (H, W, 3) for `pixel`, (3) for `rgb`.
pub(crate) fn compute_mean(kind: MeanKind, data: &Path, train: &Split) -> Result<NamedTensor> {
    Ok(match kind {
        MeanKind::None => NamedTensor {
            shape: vec![3],
            data: vec![0.0; 3],
        },
        MeanKind::Rgb => {
            let m: serde_json::Value = serde_json::from_slice(
                &std::fs::read(data.join("means.json")).context("the data has no means.json")?,
            )?;
            let ch = |k: &str| m[k].as_f64().map(|v| v as f32).context("bad means.json");
            NamedTensor {
                shape: vec![3],
                data: vec![ch("R")?, ch("G")?, ch("B")?],
            }
        }
        MeanKind::Pixel => {
            let px = train.h * train.w * 3;
            let mut sum = vec![0f64; px];
            for img in train.images.chunks_exact(px) {
                for (s, &v) in sum.iter_mut().zip(img) {
                    *s += v as f64;
                }
            }
            NamedTensor {
                shape: vec![train.h, train.w, 3],
                data: sum
                    .iter()
                    .map(|s| (s / train.n.max(1) as f64) as f32)
                    .collect(),
            }
        }
    })
}

/// Turn images `idx` of a split into a normalised f32 batch (augmented when `aug` is set).
pub(crate) fn make_batch(
    s: &Split,
    idx: &[usize],
    mean: &NamedTensor,
    aug: Option<(&AugmentConfig, u64, u64)>,
) -> (Vec<f32>, Vec<i64>) {
    let px = s.h * s.w * 3;
    let mut out = vec![0f32; idx.len() * px];
    out.par_chunks_mut(px)
        .zip(idx.par_iter().enumerate())
        .for_each(|(dst, (k, &i))| {
            let src = &s.images[i * px..(i + 1) * px];
            match aug {
                Some((a, seed, epoch)) if !augment::is_identity(a) => {
                    let mut rng =
                        ChaCha8Rng::seed_from_u64(derive_seed(seed, "augment", epoch, i as u64));
                    augment::augment(src, s.h, s.w, a, &mut rng, dst);
                }
                _ => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v as f32),
            }
            let _ = k;
            subtract_mean(dst, mean);
        });
    (out, idx.iter().map(|&i| s.labels[i]).collect())
}

/// Subtract the training mean from one image's values (0..255, HWC): per channel (RGB
/// means, 3 values) or per pixel (the mean image). What every model input goes through,
/// in training, evaluation and prediction.
pub(crate) fn subtract_mean(dst: &mut [f32], mean: &NamedTensor) {
    if mean.data.len() == 3 {
        for p in dst.chunks_exact_mut(3) {
            for (v, m) in p.iter_mut().zip(&mean.data) {
                *v -= m;
            }
        }
    } else {
        for (d, m) in dst.iter_mut().zip(&mean.data) {
            *d -= m;
        }
    }
}

/// Run `consume(i, make(i))` for `i` in `0..jobs`, with `make` running one or two jobs
/// ahead on a worker thread: batches are gathered, augmented and normalised while the
/// model works on the previous one.
pub(crate) fn prefetched<T: Send>(
    jobs: usize,
    make: impl Fn(usize) -> T + Sync,
    mut consume: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let make = &make;
        scope.spawn(move || {
            for i in 0..jobs {
                if tx.send(make(i)).is_err() {
                    break; // the consumer stopped (an error): stop too
                }
            }
        });
        for i in 0..jobs {
            let item = rx.recv().context("the batch worker stopped")?;
            consume(i, item)?;
        }
        Ok(())
    })
}
