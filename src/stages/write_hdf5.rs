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
use crate::data::decode::{
    decode_bytes, decode_checked, decode_ref, read_checked, resize_to, BatchCache, GoneFile, Jpeg,
    Unusable, MAX_PIXELS,
};
use crate::data::h5::SplitWriter;
use crate::data::index::{read_index, shown_path, splits_in, ImageRef};
use crate::manifest::{Hdf5Config, OnBadImage};
use image::metadata::Orientation::NoTransforms;

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

/// The most pixel bytes one block buffer holds (beyond one chunk).
const MAX_BLOCK_BYTES: usize = 256 << 20;

/// The most pixel bytes one HDF5 chunk may hold.
const MAX_CHUNK_BYTES: usize = 1 << 30;

/// Run the hdf5 stage. An indexed image that is gone gets what to run added: the index
/// made again where the dataset is now.
pub fn run(ctx: &StageCtx<'_>, c: &Hdf5Config) -> Result<String> {
    write(ctx, c).map_err(|e| {
        if !e.chain().any(|x| x.is::<GoneFile>()) {
            return e;
        }
        match ingest_above(ctx.pipeline, &ctx.stage.name) {
            Some(ingest) => e.context(format!(
                "run again to take the dataset as it is now; an index made before pipe named images relative to their dataset holds absolute paths: if the dataset (or the project) moved since, `pipe run {} --force {ingest}` indexes it where it is (the HDF5 comes out the same, so what was trained on it stays cached)",
                ctx.pipeline.name
            )),
            None => e.context("run again to take the dataset as it is now"),
        }
    })
}

/// The ingest stage that stage `name` reads from, through its inputs.
fn ingest_above(p: &crate::manifest::Pipeline, name: &str) -> Option<String> {
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        let s = p.stages.get(&n)?;
        if matches!(s.config, crate::manifest::StageConfig::Ingest(_)) {
            return Some(n);
        }
        todo.extend(s.inputs.iter().cloned());
    }
    None
}

fn write(ctx: &StageCtx<'_>, c: &Hdf5Config) -> Result<String> {
    let input = ctx.input_dir();
    let splits = splits_in(input)?;
    if splits.is_empty() {
        bail!("input `{}` holds no split index", ctx.inputs[0].0);
    }
    let total: usize = splits
        .iter()
        .map(|s| read_index(&input.join(format!("{s}.csv"))).map(|r| r.len()))
        .sum::<Result<usize>>()?;
    // What `dataset:` index paths are relative to: the folder the ingest stage above
    // reads, as the manifest names it now (the index's rows carry their content hashes,
    // checked as each file is read).
    let dataset = ingest_above(ctx.pipeline, &ctx.stage.name)
        .and_then(|i| super::external_root(ctx.pipeline, &ctx.pipeline.stages[&i]));
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
            .map(|r| ImageRef::resolve(&r.path, input, dataset.as_deref()))
            .collect::<Result<_>>()?;
        let (w, h) = match c.size {
            Some([w, h]) => (w, h),
            // The split's size is its first decodable image's (with `skip`, undecodable
            // ones before it are left out like any other).
            None => {
                let mut dims = None;
                for (r, row) in refs.iter().zip(&rows) {
                    if let ImageRef::File(p) = r {
                        if let Err(Unusable::Changed(e)) = read_checked(r, p, &row.hash) {
                            return Err(e);
                        }
                    }
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
        let frame = (w * h * 3) as usize;
        // A block is what one buffer holds (two take turns): 32 chunks, at least 256
        // images, but at most 256 MiB of pixels (4096 x 4096 images are allowed) and never
        // less than one chunk.
        if c.chunk.saturating_mul(frame) > MAX_CHUNK_BYTES {
            bail!(
                "a chunk of {} images of {w}x{h} is {} MiB, more than the {} MiB one may be (HDF5 caps a chunk at 4 GiB; two blocks of at least a chunk are held in memory): lower `chunk`",
                c.chunk,
                c.chunk.saturating_mul(frame) >> 20,
                MAX_CHUNK_BYTES >> 20
            );
        }
        let out = ctx.out.join(format!("{split}.h5"));
        let mut writer = SplitWriter::create(&out, rows.len(), h as usize, w as usize, c.chunk)?;
        let mut sums = [0u64; 3];
        let block = (c.chunk * 32)
            .max(256)
            .min((MAX_BLOCK_BYTES / frame).max(c.chunk));
        let starts: Vec<usize> = (0..rows.len()).step_by(block).collect();
        // Each image is decoded straight into its slot of the block's buffer; two buffers
        // take turns (one written while the other fills), so no block allocates anew.
        let decode_block = |start: usize, mut pixels: Vec<u8>| -> Result<Block> {
            let end = (start + block).min(rows.len());
            let len = end - start;
            if pixels.len() < len * frame {
                pixels.resize(len * frame, 0);
            }
            let decoded: Vec<Result<Option<[u64; 3]>>> = pixels[..len * frame]
                .par_chunks_mut(frame)
                .zip(&refs[start..end])
                .enumerate()
                .map(|(i, (slot, r))| {
                    decode_one(r, &rows[start + i].hash, &batches, c, (w, h), slot)
                })
                .collect();
            let mut out = Block {
                pixels,
                used: 0,
                labels: Vec::with_capacity(len),
                sums: [0; 3],
                skipped: Vec::new(),
                len,
            };
            for (i, d) in decoded.into_iter().enumerate() {
                match d? {
                    Some(s) => {
                        for (acc, v) in out.sums.iter_mut().zip(s) {
                            *acc += v;
                        }
                        // Close the gap a skipped image left (nothing moves otherwise).
                        let at = out.labels.len() * frame;
                        if at != i * frame {
                            out.pixels.copy_within(i * frame..(i + 1) * frame, at);
                        }
                        out.labels.push(rows[start + i].label);
                    }
                    None => out
                        .skipped
                        .push(shown_path(&rows[start + i].path).to_string()),
                }
            }
            out.used = out.labels.len() * frame;
            Ok(out)
        };
        // Decode block k+1 on the pool while block k is written to the file.
        let mut pending = match starts.first() {
            Some(&s0) => Some(decode_block(s0, Vec::new())?),
            None => None,
        };
        let mut spare = Vec::new();
        for (k, _) in starts.iter().enumerate() {
            let current = pending.take().expect("a decoded block is pending");
            let next_start = starts.get(k + 1).copied();
            let buffer = std::mem::take(&mut spare);
            let (written, next) = rayon::join(
                || -> Result<()> {
                    writer.append(&current.pixels[..current.used], &current.labels)
                },
                || next_start.map(|s| decode_block(s, buffer)).transpose(),
            );
            written?;
            pending = next?;
            for (acc, v) in sums.iter_mut().zip(current.sums) {
                *acc += v;
            }
            skipped.extend(current.skipped);
            spare = current.pixels;
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

struct Block {
    /// Decoded images, HWC, back to back in the first `used` bytes.
    pixels: Vec<u8>,
    used: usize,
    labels: Vec<i64>,
    sums: [u64; 3],
    skipped: Vec<String>,
    len: usize,
}

/// Decode, resize and check one image, whose index recorded content hash `hash`, into
/// `slot` (w x h x 3 bytes); its per-channel sums, or `None` when it is unusable and
/// skipped. A colour JPEG already the split's size and upright is decoded in place.
fn decode_one(
    r: &ImageRef,
    hash: &str,
    batches: &BatchCache,
    c: &Hdf5Config,
    (w, h): (u32, u32),
    slot: &mut [u8],
) -> Result<Option<[u64; 3]>> {
    let bad = |e: anyhow::Error| match c.on_bad_image {
        OnBadImage::Skip => Ok(None),
        OnBadImage::Error => Err(e.context(format!(
            "cannot decode image {r} (set on_bad_image = \"skip\" to leave such files out)"
        ))),
    };
    let decoded = match r {
        ImageRef::File(p) => {
            let bytes = match read_checked(r, p, hash) {
                Ok(b) => b,
                Err(Unusable::Changed(e)) => return Err(e),
                Err(Unusable::Bad(e)) => return bad(e),
            };
            match Jpeg::open(&bytes, p, MAX_PIXELS) {
                Ok(Some(mut j)) if j.dims == (w, h) && j.orientation == NoTransforms => {
                    // The slot holds an image of an earlier block: zeroed first, as a fresh
                    // buffer is, so a corrupt file that zune-jpeg accepts without filling
                    // every row (a second scan, a marker before the end) stores black
                    // there, as before, and never another image's pixels.
                    slot.fill(0);
                    match j.decode_into(slot) {
                        Ok(()) => None,
                        Err(e) => return bad(e),
                    }
                }
                Ok(Some(j)) => Some(j.into_rgb()),
                Ok(None) => Some(decode_bytes(&bytes, p)),
                Err(e) => return bad(e),
            }
        }
        ImageRef::CifarRecord(..) => match decode_checked(r, batches, hash) {
            Ok(img) => Some(Ok(img)),
            Err(Unusable::Changed(e)) => return Err(e),
            Err(Unusable::Bad(e)) => return bad(e),
        },
    };
    if let Some(img) = decoded {
        let img = match img {
            Ok(img) => img,
            Err(e) => return bad(e),
        };
        let img = resize_to(img, c.size, c.filter);
        if img.dimensions() != (w, h) {
            let (iw, ih) = img.dimensions();
            bail!(
                "image {r} is {iw}x{ih} but the split's images are {w}x{h}; set `size = [{w}, {h}]` in the hdf5 stage to resize"
            );
        }
        slot.copy_from_slice(img.as_raw());
    }
    Ok(Some(channel_sums(slot)))
}

/// The sums of the R, G and B bytes of HWC pixels `px`: 48 bytes (16 pixels) at a time in
/// u32 lanes that the compiler vectorises, folded into u64 before a lane could overflow.
/// Not inlined: inlined into the decode loop it was compiled as scalar byte loads (perf
/// annotate of the release build), a few percent of a cold `hdf5` stage.
#[inline(never)]
fn channel_sums(px: &[u8]) -> [u64; 3] {
    // Chunks summed before the lanes are folded: 255 x 2^24 < 2^32.
    channel_sums_folding_every::<{ 1 << 24 }>(px)
}

/// [`channel_sums`], the lanes folded every `FLUSH` chunks of 48 bytes.
#[inline(always)]
fn channel_sums_folding_every<const FLUSH: usize>(px: &[u8]) -> [u64; 3] {
    const LANES: usize = 48;
    let mut s = [0u64; 3];
    let (body, rest) = px.as_chunks::<LANES>();
    for part in body.chunks(FLUSH) {
        let mut acc = [0u32; LANES];
        for c in part {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += u32::from(v);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            s[j % 3] += u64::from(*a);
        }
    }
    for p in rest.chunks_exact(3) {
        s[0] += u64::from(p[0]);
        s[1] += u64::from(p[1]);
        s[2] += u64::from(p[2]);
    }
    s
}

fn copy_classes(input: &Path, out: &Path) -> Result<()> {
    crate::data::copy_file(&input.join("classes.csv"), &out.join("classes.csv"))
}

#[cfg(test)]
mod tests {
    use super::{channel_sums, channel_sums_folding_every};

    #[test]
    fn channel_sums_equal_a_plain_count_at_every_length() {
        // Lengths around the 48-byte lanes, and bytes that differ by channel and position.
        for n in [0usize, 1, 15, 16, 17, 100, 4096] {
            let px: Vec<u8> = (0..n * 3).map(|i| ((i * 37 + i / 3) % 256) as u8).collect();
            let mut want = [0u64; 3];
            for p in px.chunks_exact(3) {
                for c in 0..3 {
                    want[c] += u64::from(p[c]);
                }
            }
            assert_eq!(channel_sums(&px), want, "{n} pixels");
        }
        let white = vec![255u8; 48 * 1000 + 6];
        assert_eq!(channel_sums(&white), [255 * 16002; 3]);
        // The lanes folded every few chunks, as they are every 2^24 in a large split.
        let px: Vec<u8> = (0..48 * 7 + 9).map(|i| (i % 251) as u8).collect();
        let want = channel_sums_folding_every::<{ 1 << 24 }>(&px);
        assert_eq!(channel_sums_folding_every::<1>(&px), want);
        assert_eq!(channel_sums_folding_every::<3>(&px), want);
    }
}
