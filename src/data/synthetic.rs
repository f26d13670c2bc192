//! Generated datasets with learnable structure, written as real files in real layouts.
//!
//! Each class has its own hue and stripe orientation/frequency; every image adds random
//! phase, brightness and noise, so a network must learn the pattern, not memorise pixels.
//! Used by the `synthetic` ingest format (the demo), by `pipe demo-data` (benchmarks) and
//! by tests. Every image is seeded by (seed, split, class, index), so output is identical
//! whatever the thread count.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use image::{codecs::jpeg::JpegEncoder, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::cifar;

fn rng_for(seed: u64, split: u64, class: usize, i: usize) -> ChaCha8Rng {
    let h = blake3::hash(
        &[
            seed.to_le_bytes(),
            split.to_le_bytes(),
            (class as u64).to_le_bytes(),
            (i as u64).to_le_bytes(),
        ]
        .concat(),
    );
    let mut s = [0u8; 32];
    s.copy_from_slice(h.as_bytes());
    ChaCha8Rng::from_seed(s)
}

fn hue_to_rgb(h: f32) -> [f32; 3] {
    let h6 = (h.fract() + 1.0).fract() * 6.0;
    let x = 1.0 - (h6 % 2.0 - 1.0).abs();
    match h6 as u32 {
        0 => [1.0, x, 0.0],
        1 => [x, 1.0, 0.0],
        2 => [0.0, 1.0, x],
        3 => [0.0, x, 1.0],
        4 => [x, 0.0, 1.0],
        _ => [1.0, 0.0, x],
    }
}

/// One image of class `class` out of `classes`.
pub fn synth_image(class: usize, classes: usize, w: u32, h: u32, rng: &mut impl Rng) -> RgbImage {
    let base = hue_to_rgb(class as f32 / classes.max(1) as f32);
    let angle = (class as f32 * 0.618_034 * std::f32::consts::PI) % std::f32::consts::PI;
    let freq = 2.0 + (class % 3) as f32 * 1.5;
    let phase: f32 = rng.random_range(0.0..std::f32::consts::TAU);
    let bright: f32 = rng.random_range(0.55..0.9);
    let (ca, sa) = (angle.cos(), angle.sin());
    let mut img = RgbImage::new(w, h);
    for (x, y, px) in img.enumerate_pixels_mut() {
        let u = x as f32 / w as f32;
        let v = y as f32 / h as f32;
        let t = ((u * ca + v * sa) * freq * std::f32::consts::TAU + phase).sin() * 0.5 + 0.5;
        let mut c = [0u8; 3];
        for k in 0..3 {
            let noise: f32 = rng.random_range(-0.08..0.08);
            let val = (base[k] * bright * (0.35 + 0.65 * t) + 0.1 + noise).clamp(0.0, 1.0);
            c[k] = (val * 255.0).round() as u8;
        }
        *px = Rgb(c);
    }
    img
}

/// Encode an image as JPEG (quality 90).
pub fn jpeg_bytes(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90).encode_image(img)?;
    Ok(out)
}

/// Write a Tiny-ImageNet-shaped tree: `wnids.txt`, `words.txt`,
/// `train/<wnid>/images/<wnid>_<i>.JPEG`, `val/images/val_<i>.JPEG`,
/// `val/val_annotations.txt`. Returns the number of images written.
pub fn write_tiny_imagenet(
    dir: &Path,
    classes: usize,
    train_per_class: usize,
    val_per_class: usize,
    size: u32,
    seed: u64,
) -> Result<usize> {
    let wnids: Vec<String> = (0..classes)
        .map(|c| format!("n{:08}", 1000 + c * 7))
        .collect();
    fs::create_dir_all(dir.join("val/images"))?;
    fs::write(dir.join("wnids.txt"), wnids.join("\n") + "\n")?;
    let words: String = wnids
        .iter()
        .enumerate()
        .map(|(c, w)| format!("{w}\tsynthetic class {c}, pattern {c}\n"))
        .collect();
    fs::write(dir.join("words.txt"), words)?;
    for w in &wnids {
        fs::create_dir_all(dir.join("train").join(w).join("images"))?;
    }
    let jobs: Vec<(usize, usize)> = (0..classes)
        .flat_map(|c| (0..train_per_class).map(move |i| (c, i)))
        .collect();
    jobs.par_iter().try_for_each(|&(c, i)| -> Result<()> {
        let mut rng = rng_for(seed, 0, c, i);
        let img = synth_image(c, classes, size, size, &mut rng);
        let p = dir
            .join("train")
            .join(&wnids[c])
            .join("images")
            .join(format!("{}_{i}.JPEG", wnids[c]));
        fs::write(&p, jpeg_bytes(&img)?).with_context(|| format!("cannot write {}", p.display()))
    })?;
    let val: Vec<(usize, usize)> = (0..classes * val_per_class)
        .map(|k| (k % classes, k))
        .collect();
    val.par_iter().try_for_each(|&(c, k)| -> Result<()> {
        let mut rng = rng_for(seed, 1, c, k);
        let img = synth_image(c, classes, size, size, &mut rng);
        let p = dir.join("val/images").join(format!("val_{k}.JPEG"));
        fs::write(&p, jpeg_bytes(&img)?).with_context(|| format!("cannot write {}", p.display()))
    })?;
    let mut ann = fs::File::create(dir.join("val/val_annotations.txt"))?;
    for &(c, k) in &val {
        writeln!(ann, "val_{k}.JPEG\t{}\t0\t0\t{size}\t{size}", wnids[c])?;
    }
    Ok(jobs.len() + val.len())
}

/// Write `root/<class>/<i>.jpg` folders. Returns the number of images written.
pub fn write_image_folder(
    dir: &Path,
    classes: usize,
    per_class: usize,
    size: u32,
    seed: u64,
) -> Result<usize> {
    let jobs: Vec<(usize, usize)> = (0..classes)
        .flat_map(|c| (0..per_class).map(move |i| (c, i)))
        .collect();
    for c in 0..classes {
        fs::create_dir_all(dir.join(format!("class_{c:03}")))?;
    }
    jobs.par_iter().try_for_each(|&(c, i)| -> Result<()> {
        let mut rng = rng_for(seed, 2, c, i);
        let img = synth_image(c, classes, size, size, &mut rng);
        let p = dir
            .join(format!("class_{c:03}"))
            .join(format!("{i:05}.jpg"));
        fs::write(&p, jpeg_bytes(&img)?).with_context(|| format!("cannot write {}", p.display()))
    })?;
    Ok(jobs.len())
}

/// Write CIFAR-10 binary batches (`per_batch` records in each of the five train batches
/// and the test batch) and `batches.meta.txt`. Returns the number of images written.
pub fn write_cifar10(dir: &Path, per_batch: usize, seed: u64) -> Result<usize> {
    fs::create_dir_all(dir)?;
    let names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    fs::write(dir.join("batches.meta.txt"), names.join("\n") + "\n\n")?;
    let files: Vec<&str> = cifar::TRAIN_BATCHES
        .iter()
        .copied()
        .chain([cifar::TEST_BATCH])
        .collect();
    for (b, f) in files.iter().enumerate() {
        let recs: Vec<Vec<u8>> = (0..per_batch)
            .into_par_iter()
            .map(|i| {
                let c = (i * 7 + b) % 10;
                let mut rng = rng_for(seed, 10 + b as u64, c, i);
                cifar::encode_record(c as u8, &synth_image(c, 10, 32, 32, &mut rng))
            })
            .collect();
        fs::write(dir.join(f), recs.concat())?;
    }
    Ok(per_batch * files.len())
}
