//! Batches: a split's images held in memory, the mean subtracted from them, and the
//! augmented, normalised batches a training step or a prediction takes, prepared on a
//! worker thread one or two ahead. Every random draw is seeded from (seed, purpose,
//! epoch, index), so a batch is the same whatever ran before it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::backend::NamedTensor;
use crate::data::{augment, h5};
use crate::manifest::{AugmentConfig, CutoutConfig, MeanKind, MixConfig};

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
            if let Some((Some(c), seed, epoch)) = aug.map(|(a, s, e)| (a.cutout, s, e)) {
                let mut rng =
                    ChaCha8Rng::seed_from_u64(derive_seed(seed, "cutout", epoch, i as u64));
                cutout(dst, s.h, s.w, c, &mut rng);
            }
        });
    (out, idx.iter().map(|&i| s.labels[i]).collect())
}

/// Cutout (DeVries & Taylor's): a square of `c.size` centred on a random pixel, clipped
/// at the borders, set to 0 (the mean, once subtracted), with probability `c.p`. As in
/// their reference code, it spans `size / 2` on each side of the centre (the centre's
/// row and column before it), so an odd size cuts the even square below it.
pub fn cutout(dst: &mut [f32], h: usize, w: usize, c: CutoutConfig, rng: &mut impl Rng) {
    let (cy, cx) = (rng.random_range(0..h), rng.random_range(0..w));
    let apply = rng.random::<f64>() < c.p;
    if !apply {
        return;
    }
    let half = c.size / 2;
    let (y0, y1) = (cy.saturating_sub(half), (cy + half).min(h));
    let (x0, x1) = (cx.saturating_sub(half), (cx + half).min(w));
    for y in y0..y1 {
        dst[(y * w + x0) * 3..(y * w + x1) * 3].fill(0.0);
    }
}

/// Mixup or CutMix of a batch `x` (n images h x w x 3) with itself rolled by one (image
/// `i` mixed with image `i - 1`, as torchvision's `MixUp` and `CutMix` do), seeded per
/// (seed, epoch, batch): the mixed-in labels and the weight λ of the batch's own. With both
/// set, one or the other with even odds. `None` when the recipe mixes nothing or the
/// batch holds one image.
#[allow(clippy::too_many_arguments)]
pub fn mix_batch(
    x: &mut [f32],
    labels: &[i64],
    (h, w): (usize, usize),
    mixup: Option<MixConfig>,
    cutmix: Option<MixConfig>,
    seed: u64,
    epoch: u64,
    batch: u64,
) -> Option<(Vec<i64>, f64)> {
    let n = labels.len();
    if n < 2 || (mixup.is_none() && cutmix.is_none()) {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, "mix", epoch, batch));
    let use_cutmix = match (mixup, cutmix) {
        (Some(_), Some(_)) => rng.random::<f64>() < 0.5,
        (None, Some(_)) => true,
        _ => false,
    };
    let alpha = if use_cutmix { cutmix } else { mixup }?.alpha;
    let lambda: f64 = rand_distr::Beta::new(alpha, alpha)
        .map(|b| rng.sample(b))
        .unwrap_or(1.0);
    let px = h * w * 3;
    let rolled: Vec<f32> = x[(n - 1) * px..]
        .iter()
        .chain(&x[..(n - 1) * px])
        .copied()
        .collect();
    let other: Vec<i64> = (0..n).map(|i| labels[(i + n - 1) % n]).collect();
    if !use_cutmix {
        mix_images(x, &rolled, lambda as f32);
        return Some((other, lambda));
    }
    let (ry, rx) = (rng.random_range(0..h), rng.random_range(0..w));
    let (y0, y1, x0, x1) = cutmix_box(h, w, lambda, ry, rx);
    for (img, src) in x.chunks_exact_mut(px).zip(rolled.chunks_exact(px)) {
        for y in y0..y1 {
            let row = (y * w + x0) * 3..(y * w + x1) * 3;
            img[row.clone()].copy_from_slice(&src[row]);
        }
    }
    let area = ((y1 - y0) * (x1 - x0)) as f64;
    Some((other, 1.0 - area / (h * w) as f64))
}

/// Mixup of images: `x = lambda * x + (1 - lambda) * rolled`.
pub fn mix_images(x: &mut [f32], rolled: &[f32], lambda: f32) {
    x.par_iter_mut()
        .zip(rolled.par_iter())
        .for_each(|(a, b)| *a = lambda * *a + (1.0 - lambda) * *b);
}

/// CutMix's box for weight `lambda` around pixel (`ry`, `rx`) of an h x w image, as
/// torchvision's `CutMix` computes it: half-sides `int(0.5 * sqrt(1 - lambda) * side)`,
/// clipped at the borders. Rows `y0..y1`, columns `x0..x1`.
pub fn cutmix_box(
    h: usize,
    w: usize,
    lambda: f64,
    ry: usize,
    rx: usize,
) -> (usize, usize, usize, usize) {
    let r = 0.5 * (1.0 - lambda).sqrt();
    let (rw, rh) = ((r * w as f64) as usize, (r * h as f64) as usize);
    (
        ry.saturating_sub(rh),
        (ry + rh).min(h),
        rx.saturating_sub(rw),
        (rx + rw).min(w),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, h: usize, w: usize) -> Vec<f32> {
        (0..n * h * w * 3).map(|i| i as f32).collect()
    }

    #[test]
    fn mixup_is_lambda_times_the_batch_plus_the_rest_times_it_rolled_by_one() {
        let (n, h, w) = (4, 3, 5);
        let x0 = batch(n, h, w);
        let mut x = x0.clone();
        let labels = [0, 1, 2, 3];
        let mix = Some(MixConfig { alpha: 0.4 });
        let (other, lambda) = mix_batch(&mut x, &labels, (h, w), mix, None, 1, 2, 3).unwrap();
        assert_eq!(other, [3, 0, 1, 2]);
        assert!(lambda > 0.0 && lambda < 1.0, "{lambda}");
        let px = h * w * 3;
        let l = lambda as f32;
        for i in 0..n {
            let j = (i + n - 1) % n;
            for k in 0..px {
                let want = l * x0[i * px + k] + (1.0 - l) * x0[j * px + k];
                assert_eq!(x[i * px + k], want);
            }
        }
        // Seeded: the same (seed, epoch, batch) mixes the same; another batch does not.
        let mut again = x0.clone();
        assert_eq!(
            mix_batch(&mut again, &labels, (h, w), mix, None, 1, 2, 3),
            Some((other, lambda))
        );
        assert_eq!(again, x);
        let mut other_batch = x0.clone();
        let (_, l2) = mix_batch(&mut other_batch, &labels, (h, w), mix, None, 1, 2, 4).unwrap();
        assert_ne!(l2, lambda);
    }

    #[test]
    fn cutmix_pastes_one_box_of_the_rolled_batch_and_lambda_is_what_is_left() {
        let (n, h, w) = (3, 8, 10);
        let x0 = batch(n, h, w);
        let labels = [4, 5, 6];
        let cut = Some(MixConfig { alpha: 1.0 });
        for b in 0..20 {
            let mut x = x0.clone();
            let (other, lambda) = mix_batch(&mut x, &labels, (h, w), None, cut, 7, 0, b).unwrap();
            assert_eq!(other, [6, 4, 5]);
            let px = h * w * 3;
            // Every value is the image's own or its predecessor's, the same pixels in each.
            let mut pasted = 0;
            for y in 0..h {
                for xx in 0..w {
                    let at = (y * w + xx) * 3;
                    let from_rolled = x[at] != x0[at];
                    for i in 0..n {
                        let j = (i + n - 1) % n;
                        let want = if from_rolled {
                            x0[j * px + at]
                        } else {
                            x0[i * px + at]
                        };
                        assert_eq!(x[i * px + at], want);
                    }
                    pasted += from_rolled as usize;
                }
            }
            assert!((lambda - (1.0 - pasted as f64 / (h * w) as f64)).abs() < 1e-12);
        }
        // torchvision's box: half-sides int(0.5 * sqrt(1 - lambda) * side), clipped.
        assert_eq!(cutmix_box(8, 10, 0.75, 4, 5), (2, 6, 3, 7));
        assert_eq!(cutmix_box(8, 10, 0.0, 0, 9), (0, 4, 4, 10));
    }

    #[test]
    fn cutout_zeroes_one_square_around_a_pixel_and_p_zero_never_does() {
        let (h, w) = (9, 9);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..30 {
            let mut x = vec![1f32; h * w * 3];
            cutout(&mut x, h, w, CutoutConfig { size: 4, p: 1.0 }, &mut rng);
            let zero: Vec<(usize, usize)> = (0..h * w)
                .filter(|i| x[i * 3] == 0.0)
                .map(|i| (i / w, i % w))
                .collect();
            let (ys, xs): (Vec<usize>, Vec<usize>) = zero.iter().cloned().unzip();
            let (y0, y1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
            let (x0, x1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
            // A square of 4 (smaller at a border), all three channels.
            assert!(y1 - y0 < 4 && x1 - x0 < 4);
            assert_eq!(zero.len(), (y1 - y0 + 1) * (x1 - x0 + 1));
            assert!(x.chunks(3).all(|p| p.iter().all(|v| *v == p[0])));
        }
        let mut x = vec![1f32; h * w * 3];
        cutout(&mut x, h, w, CutoutConfig { size: 4, p: 0.0 }, &mut rng);
        assert!(x.iter().all(|v| *v == 1.0));
    }
}
