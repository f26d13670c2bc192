//! `ingest`: read a dataset layout into indexes (`<split>.csv`, `classes.csv`).
//!
//! Formats: `tiny-imagenet`, `cifar10` (binary batches), `image-folder`, and `synthetic`
//! (generates real JPEGs into the artifact itself, for the demo and tests).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::{DatasetFiles, StageCtx};
use crate::data::decode::ChangedFile;
use crate::data::index::{
    dataset_path, shown_path, write_classes, write_index, ClassRow, IndexRow,
};
use crate::data::{cifar, synthetic};
use crate::manifest::{IngestConfig, IngestFormat};

/// Run the ingest stage.
pub fn run(ctx: &StageCtx<'_>, c: &IngestConfig) -> Result<String> {
    let (classes, splits) = match c.format {
        IngestFormat::Synthetic => synthetic_dataset(ctx.out, c)?,
        other => {
            let ds = ctx
                .dataset
                .as_ref()
                .context("ingest: the engine did not fingerprint the dataset folder")?;
            ctx.fault_point("ingest:start");
            match other {
                IngestFormat::TinyImagenet => tiny_imagenet(ds)?,
                IngestFormat::Cifar10 => cifar10(ds)?,
                IngestFormat::ImageFolder => image_folder(ds)?,
                IngestFormat::Synthetic => unreachable!(),
            }
        }
    };
    write_classes(&ctx.out.join("classes.csv"), &classes)?;
    let mut parts = Vec::new();
    for (name, rows) in &splits {
        write_index(&ctx.out.join(format!("{name}.csv")), rows)?;
        parts.push(format!("{name} {}", rows.len()));
    }
    Ok(format!("{} classes; {}", classes.len(), parts.join(", ")))
}

fn is_image(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".jpg") || lower.ends_with(".jpeg") || lower.ends_with(".png")
}

/// The image files (`.jpg`, `.jpeg`, `.png`) directly in `dir`, by name: every entry so
/// named that is not a folder (a FIFO or a link to a device is kept, to be refused by
/// name when read). A name that is not UTF-8 is an error naming it: the index holds
/// paths as text, and a replacement character would name no file.
fn images_in(dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for e in entries.filter_map(|e| e.ok()) {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            bail!(
                "{}: a file name that is not UTF-8; rename it",
                e.path().display()
            );
        };
        // The entry's type from the folder listing (no `stat`), followed for a link only.
        let folder = match e.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => e.path().is_dir(),
        };
        if is_image(&name) && !folder {
            files.push(name);
        }
    }
    files.sort();
    Ok(files)
}

fn hash_of(ds: &DatasetFiles<'_>, rel: &str) -> Result<String> {
    ds.hash_of(rel).with_context(|| {
        format!(
            "{}: file appeared after the dataset was fingerprinted; run again",
            ds.root.join(rel).display()
        )
    })
}

fn row(ds: &DatasetFiles<'_>, rel: &str, label: usize, class: &str) -> Result<IndexRow> {
    Ok(IndexRow {
        path: dataset_path(rel),
        label: label as i64,
        class: class.to_string(),
        hash: hash_of(ds, rel)?,
    })
}

type Splits = BTreeMap<String, Vec<IndexRow>>;

fn tiny_imagenet(ds: &DatasetFiles<'_>) -> Result<(Vec<ClassRow>, Splits)> {
    let root = ds.root;
    let wnids_path = root.join("wnids.txt");
    if std::fs::symlink_metadata(&wnids_path).is_err() {
        bail!(
            "tiny-imagenet: {} not found (is `root` the tiny-imagenet-200 folder?)",
            wnids_path.display()
        );
    }
    let text = ds.read_text("wnids.txt").context("tiny-imagenet")?;
    let mut wnids: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    wnids.sort();
    wnids.dedup();
    if wnids.is_empty() {
        bail!("tiny-imagenet: {} lists no classes", wnids_path.display());
    }
    let label: HashMap<&str, usize> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let mut names: HashMap<String, String> = HashMap::new();
    // Optional: the class names (the wnids where it gives none, or cannot be read, as a
    // FIFO or a file that is not UTF-8 always could not). Changed since the fingerprint:
    // an error, as for every file the index is made from.
    let words = match ds.hash_of("words.txt").is_some() {
        true => match ds.read("words.txt") {
            Ok(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.chain().any(|c| c.is::<ChangedFile>()) => {
                return Err(e.context("tiny-imagenet"))
            }
            Err(_) => None,
        },
        false => None,
    };
    if let Some(words) = words {
        for l in words.lines() {
            if let Some((w, n)) = l.split_once('\t') {
                names.insert(w.trim().to_string(), n.trim().to_string());
            }
        }
    }
    let classes: Vec<ClassRow> = wnids
        .iter()
        .enumerate()
        .map(|(i, w)| ClassRow {
            label: i as i64,
            id: w.clone(),
            name: names.get(w).cloned().unwrap_or_else(|| w.clone()),
        })
        .collect();

    let mut splits = Splits::new();
    // The classes' folders are listed in parallel, and their rows joined in class order
    // (an error, too, is the first class's in that order, whichever thread met it first).
    let per_class: Vec<Result<Vec<IndexRow>>> = wnids
        .par_iter()
        .enumerate()
        .map(|(i, w)| -> Result<Vec<IndexRow>> {
            let dir = root.join("train").join(w).join("images");
            if !dir.is_dir() {
                bail!(
                    "tiny-imagenet: {} missing (wnids.txt lists {w})",
                    dir.display()
                );
            }
            let files = images_in(&dir)?;
            if files.is_empty() {
                bail!(
                    "tiny-imagenet: {} holds no training images for class {w} (listed in wnids.txt)",
                    dir.display()
                );
            }
            files
                .iter()
                .map(|f| row(ds, &format!("train/{w}/images/{f}"), i, w))
                .collect()
        })
        .collect();
    let per_class: Vec<Vec<IndexRow>> = per_class.into_iter().collect::<Result<_>>()?;
    let train: Vec<IndexRow> = per_class.into_iter().flatten().collect();
    ds.check_listed(train.iter().map(|r| shown_path(&r.path)), |rel| {
        let parts: Vec<&str> = rel.split('/').collect();
        matches!(parts[..], ["train", w, "images", f] if label.contains_key(w) && is_image(f))
    })?;
    splits.insert("train".into(), train);

    let ann_path = root.join("val/val_annotations.txt");
    if !ann_path.is_file() {
        bail!(
            "tiny-imagenet: {} is missing: the layout has a val split (val/images/ + val/val_annotations.txt); restore it, or use format = \"image-folder\" on train/",
            ann_path.display()
        );
    }
    {
        let ann = ds.read_text("val/val_annotations.txt")?;
        let mut val = Vec::new();
        // Each image once: listed twice, it would be scored twice (under two classes,
        // if the lines disagree).
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (ln, l) in ann.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            let mut cols = l.split('\t');
            let (Some(file), Some(w)) = (cols.next(), cols.next()) else {
                bail!(
                    "{}:{}: expected `<file>\\t<wnid>\\t...`",
                    ann_path.display(),
                    ln + 1
                );
            };
            let Some(&lab) = label.get(w.trim()) else {
                bail!(
                    "{}:{}: class `{w}` is not in wnids.txt",
                    ann_path.display(),
                    ln + 1
                );
            };
            let rel = format!("val/images/{}", file.trim());
            if let Some(first) = seen.insert(rel.clone(), ln + 1) {
                bail!(
                    "{}:{}: image {} is listed again (first on line {first}); each validation image is listed once",
                    ann_path.display(),
                    ln + 1,
                    file.trim()
                );
            }
            if ds.hash_of(&rel).is_none() {
                bail!(
                    "{}:{}: image {} does not exist",
                    ann_path.display(),
                    ln + 1,
                    root.join(&rel).display()
                );
            }
            val.push(row(ds, &rel, lab, w.trim())?);
        }
        splits.insert("val".into(), val);
    }
    Ok((classes, splits))
}

fn cifar10(ds: &DatasetFiles<'_>) -> Result<(Vec<ClassRow>, Splits)> {
    let root = ds.root;
    let meta = root.join("batches.meta.txt");
    let names = match std::fs::symlink_metadata(&meta) {
        Ok(_) => cifar::meta_names(&ds.read_text("batches.meta.txt").context("cifar10")?),
        Err(e) => bail!(
            "cifar10: cannot read {}: {e}; `root` must be the folder of the binary version (cifar-10-batches-bin)",
            meta.display()
        ),
    };
    let classes: Vec<ClassRow> = names
        .iter()
        .enumerate()
        .map(|(i, n)| ClassRow {
            label: i as i64,
            id: n.clone(),
            name: n.clone(),
        })
        .collect();
    let mut splits = Splits::new();
    for (split, files) in [
        ("train", cifar::TRAIN_BATCHES.to_vec()),
        ("test", vec![cifar::TEST_BATCH]),
    ] {
        let mut rows = Vec::new();
        for f in files {
            let p = root.join(f);
            if std::fs::symlink_metadata(&p).is_err() {
                bail!("cifar10: {} not found", p.display());
            }
            // A FIFO, a device, or a link to one named like a batch is refused by what it
            // is, never read.
            crate::data::check_regular(&p).context("cifar10")?;
            let bytes = ds.read(f)?;
            cifar::check_batch(&p, &bytes)?;
            let batch_rows: Vec<Result<IndexRow>> = bytes
                .par_chunks(cifar::RECORD)
                .enumerate()
                .map(|(i, rec)| {
                    let lab = rec[0] as usize;
                    let class = names.get(lab).with_context(|| {
                        format!(
                            "{} record {i}: label {lab} but batches.meta.txt names {} classes",
                            p.display(),
                            names.len()
                        )
                    })?;
                    Ok(IndexRow {
                        path: format!("{}#{i}", dataset_path(f)),
                        label: lab as i64,
                        class: class.clone(),
                        hash: blake3::hash(rec).to_hex().to_string(),
                    })
                })
                .collect();
            for r in batch_rows {
                rows.push(r?);
            }
        }
        splits.insert(split.into(), rows);
    }
    Ok((classes, splits))
}

fn image_folder(ds: &DatasetFiles<'_>) -> Result<(Vec<ClassRow>, Splits)> {
    let root = ds.root;
    let mut class_dirs: Vec<String> = Vec::new();
    let entries = fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))?;
    for e in entries.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
        match e.file_name().to_str() {
            Some(n) if n.starts_with('.') => {}
            Some(n) => class_dirs.push(n.to_string()),
            None => bail!(
                "image-folder: {}: a class folder whose name is not UTF-8; rename it",
                e.path().display()
            ),
        }
    }
    class_dirs.sort();
    if class_dirs.is_empty() {
        bail!(
            "image-folder: {} has no class folders (expected root/<class>/*.jpg)",
            root.display()
        );
    }
    let mut rows = Vec::new();
    for (i, c) in class_dirs.iter().enumerate() {
        let files = images_in(&root.join(c))?;
        if files.is_empty() {
            bail!(
                "image-folder: class folder {} holds no images (.jpg, .jpeg, .png); remove it or add images",
                root.join(c).display()
            );
        }
        for f in files {
            rows.push(row(ds, &format!("{c}/{f}"), i, c)?);
        }
    }
    let classes = class_dirs
        .iter()
        .enumerate()
        .map(|(i, c)| ClassRow {
            label: i as i64,
            id: c.clone(),
            name: c.clone(),
        })
        .collect();
    ds.check_listed(rows.iter().map(|r| shown_path(&r.path)), |rel| {
        matches!(rel.split('/').collect::<Vec<_>>()[..], [c, f] if !c.starts_with('.') && is_image(f))
    })?;
    let mut splits = Splits::new();
    splits.insert("train".into(), rows);
    Ok((classes, splits))
}

fn synthetic_dataset(out: &Path, c: &IngestConfig) -> Result<(Vec<ClassRow>, Splits)> {
    let classes = c.classes.unwrap_or(10);
    let [w, h] = c.image_size.unwrap_or([64, 64]);
    let seed = c.seed.unwrap_or(42);
    let class_rows: Vec<ClassRow> = (0..classes)
        .map(|i| ClassRow {
            label: i as i64,
            id: format!("class_{i:03}"),
            name: format!("synthetic pattern {i}"),
        })
        .collect();
    let mut splits = Splits::new();
    for (split_id, split, per_class) in [
        (0u64, "train", c.train_per_class.unwrap_or(100)),
        (1u64, "val", c.val_per_class.unwrap_or(20)),
    ] {
        if per_class == 0 {
            continue;
        }
        for cr in &class_rows {
            fs::create_dir_all(out.join("images").join(split).join(&cr.id))?;
        }
        let jobs: Vec<(usize, usize)> = (0..classes)
            .flat_map(|k| (0..per_class).map(move |i| (k, i)))
            .collect();
        let rows: Vec<Result<IndexRow>> = jobs
            .par_iter()
            .map(|&(k, i)| {
                let mut rng = synthetic_rng(seed, split_id, k, i);
                let img = synthetic::synth_image(k, classes, w, h, &mut rng);
                let bytes = synthetic::jpeg_bytes(&img)?;
                let rel = format!("images/{split}/{}/{i:05}.jpg", class_rows[k].id);
                crate::data::write_file(&out.join(&rel), &bytes)?;
                Ok(IndexRow {
                    path: rel,
                    label: k as i64,
                    class: class_rows[k].id.clone(),
                    hash: blake3::hash(&bytes).to_hex().to_string(),
                })
            })
            .collect();
        splits.insert(split.into(), rows.into_iter().collect::<Result<_>>()?);
    }
    Ok((class_rows, splits))
}

fn synthetic_rng(seed: u64, split: u64, class: usize, i: usize) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let h = blake3::hash(
        &[
            b"ingest-synthetic".as_slice(),
            &seed.to_le_bytes(),
            &split.to_le_bytes(),
            &(class as u64).to_le_bytes(),
            &(i as u64).to_le_bytes(),
        ]
        .concat(),
    );
    rand_chacha::ChaCha8Rng::from_seed(*h.as_bytes())
}
