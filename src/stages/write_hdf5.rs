//! `hdf5`: decode every image of every split (in parallel), optionally resize, and write
//! `<split>.h5` (`images` (N,H,W,3) uint8, `labels` (N,) int64), `means.json` (mean R, G,
//! B of the train split, 0..255) and `classes.csv`.
//!
//! Images are decoded in blocks on all cores and written in index order, so the output is
//! the same whatever the thread count.

use std::path::Path;

use anyhow::{bail, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::StageCtx;
use crate::data::decode::{decode_checked, decode_ref, resize_to, BatchCache, Unusable};
use crate::data::h5::SplitWriter;
use crate::data::index::{read_index, splits_in, ImageRef};
use crate::manifest::{Hdf5Config, OnBadImage};

/// `means.json`: per-channel mean of the train split, in 0..255.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Means {
    /// Red.
    #[serde(rename = "R")]
    pub r: f64,
    /// Green.
    #[serde(rename = "G")]
    pub g: f64,
    /// Blue.
    #[serde(rename = "B")]
    pub b: f64,
}

/// Run the hdf5 stage.
pub fn run(ctx: &StageCtx<'_>, c: &Hdf5Config) -> Result<String> {
    let input = ctx.input_dir();
    let splits = splits_in(input)?;
    if splits.is_empty() {
        bail!("input `{}` holds no split index", ctx.inputs[0].0);
    }
    let total: usize = splits
        .iter()
        .map(|s| read_index(&input.join(format!("{s}.csv"))).map(|r| r.len()))
        .sum::<Result<usize>>()?;
    ctx.fault_point("hdf5:start");
    let pb = ctx.watcher.bar(total as u64, &ctx.stage.name, "images");
    let batches = BatchCache::default();
    let mut parts = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut means = None;
    for split in &splits {
        let rows = read_index(&input.join(format!("{split}.csv")))?;
        let refs: Vec<ImageRef> = rows
            .iter()
            .map(|r| ImageRef::resolve(&r.path, input))
            .collect::<Result<_>>()?;
        let (w, h) = match c.size {
            Some([w, h]) => (w, h),
            // The split's size is its first decodable image's (with `skip`, undecodable
            // ones before it are left out like any other).
            None => {
                let mut dims = None;
                for r in &refs {
                    match decode_ref(r, &batches) {
                        Ok(i) => {
                            dims = Some(i.dimensions());
                            break;
                        }
                        Err(_) if c.on_bad_image == OnBadImage::Skip => continue,
                        Err(e) => {
                            return Err(e.context(format!(
                                "cannot decode image {r} (set on_bad_image = \"skip\" to leave such files out)"
                            )))
                        }
                    }
                }
                dims.unwrap_or((1, 1))
            }
        };
        let out = ctx.out.join(format!("{split}.h5"));
        let mut writer = SplitWriter::create(&out, rows.len(), h as usize, w as usize, c.chunk)?;
        let mut sums = [0u64; 3];
        let block = (c.chunk * 32).max(256);
        let starts: Vec<usize> = (0..rows.len()).step_by(block).collect();
        let decode_block = |start: usize| -> Result<Block> {
            let end = (start + block).min(rows.len());
            let decoded: Vec<Result<Option<Decoded>>> = refs[start..end]
                .par_iter()
                .enumerate()
                .map(|(i, r)| decode_one(r, &rows[start + i].hash, &batches, c, (w, h)))
                .collect();
            let mut out = Block {
                pixels: Vec::with_capacity((end - start) * (w * h * 3) as usize),
                labels: Vec::with_capacity(end - start),
                sums: [0; 3],
                skipped: Vec::new(),
                len: end - start,
            };
            for (i, d) in decoded.into_iter().enumerate() {
                match d? {
                    Some((px, s)) => {
                        for (acc, v) in out.sums.iter_mut().zip(s) {
                            *acc += v;
                        }
                        out.pixels.extend_from_slice(&px);
                        out.labels.push(rows[start + i].label);
                    }
                    None => out.skipped.push(refs[start + i].to_string()),
                }
            }
            Ok(out)
        };
        // Decode block k+1 on the pool while block k is written to the file.
        let mut pending = match starts.first() {
            Some(&s0) => Some(decode_block(s0)?),
            None => None,
        };
        for (k, _) in starts.iter().enumerate() {
            let current = pending.take().expect("a decoded block is pending");
            let next_start = starts.get(k + 1).copied();
            let (written, next) = rayon::join(
                || -> Result<()> { writer.append(&current.pixels, &current.labels) },
                || next_start.map(decode_block).transpose(),
            );
            written?;
            pending = next?;
            for (acc, v) in sums.iter_mut().zip(current.sums) {
                *acc += v;
            }
            skipped.extend(current.skipped);
            pb.inc(current.len as u64);
            if k == 0 {
                ctx.fault_point("hdf5");
            }
        }
        let n = writer.finish()?;
        if split == "train" {
            let px = (n as u64 * w as u64 * h as u64).max(1) as f64;
            means = Some(Means {
                r: sums[0] as f64 / px,
                g: sums[1] as f64 / px,
                b: sums[2] as f64 / px,
            });
        }
        parts.push(format!("{split} {n} ({w}x{h})"));
    }
    pb.finish_and_clear();
    let Some(means) = means else {
        bail!(
            "input `{}` has no `train` split (it has: {}); means.json is computed from train",
            ctx.inputs[0].0,
            splits.join(", ")
        );
    };
    crate::data::write_file(
        &ctx.out.join("means.json"),
        serde_json::to_vec_pretty(&means)?,
    )?;
    copy_classes(input, ctx.out)?;
    let mut summary = parts.join(", ");
    if !skipped.is_empty() {
        for s in skipped.iter().take(5) {
            ctx.warn(format!("{}: skipped undecodable image {s}", ctx.stage.name));
        }
        crate::data::write_file(&ctx.out.join("skipped.txt"), skipped.join("\n") + "\n")?;
        summary.push_str(&format!("; {} undecodable images skipped", skipped.len()));
    }
    Ok(summary)
}

/// One decoded image: HWC pixels and its per-channel sums.
type Decoded = (Vec<u8>, [u64; 3]);

struct Block {
    pixels: Vec<u8>,
    labels: Vec<i64>,
    sums: [u64; 3],
    skipped: Vec<String>,
    len: usize,
}

/// Decode, resize and check one image, whose index recorded content hash `hash`; `None`
/// when it is unusable and skipped.
fn decode_one(
    r: &ImageRef,
    hash: &str,
    batches: &BatchCache,
    c: &Hdf5Config,
    (w, h): (u32, u32),
) -> Result<Option<Decoded>> {
    let img = match decode_checked(r, batches, hash) {
        Ok(img) => img,
        Err(Unusable::Changed(e)) => return Err(e),
        Err(Unusable::Bad(e)) => {
            return match c.on_bad_image {
                OnBadImage::Skip => Ok(None),
                OnBadImage::Error => Err(e.context(format!(
                    "cannot decode image {r} (set on_bad_image = \"skip\" to leave such files out)"
                ))),
            }
        }
    };
    let img = resize_to(img, c.size, c.filter);
    if img.dimensions() != (w, h) {
        let (iw, ih) = img.dimensions();
        bail!(
            "image {r} is {iw}x{ih} but the split's images are {w}x{h}; set `size = [{w}, {h}]` in the hdf5 stage to resize"
        );
    }
    let px = img.into_raw();
    let mut s = [0u64; 3];
    for p in px.chunks_exact(3) {
        s[0] += p[0] as u64;
        s[1] += p[1] as u64;
        s[2] += p[2] as u64;
    }
    Ok(Some((px, s)))
}

fn copy_classes(input: &Path, out: &Path) -> Result<()> {
    crate::data::copy_file(&input.join("classes.csv"), &out.join("classes.csv"))
}
