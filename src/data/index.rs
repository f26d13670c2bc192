//! Dataset indexes: one CSV per split (`path,label,class,hash`) and `classes.csv`.
//!
//! `path` is absolute, or relative to the folder holding the index (for images a stage
//! generated inside its own artifact). A `path` of the form `file.bin#N` is record `N` of a
//! CIFAR-10 batch file. `hash` is the BLAKE3 of the image bytes, so a changed image changes
//! the index and everything downstream re-runs, even if no file name changed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One image of a split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRow {
    /// Image location (see module docs).
    pub path: String,
    /// Integer label (index into the class list).
    pub label: i64,
    /// Class id (wnid, folder name, CIFAR class name).
    pub class: String,
    /// BLAKE3 of the image bytes (hex).
    pub hash: String,
}

/// One class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassRow {
    /// Integer label.
    pub label: i64,
    /// Class id (wnid, folder name).
    pub id: String,
    /// Human-readable name.
    pub name: String,
}

/// Read a split index.
pub fn read_index(path: &Path) -> Result<Vec<IndexRow>> {
    read_csv(path)
}

/// Write a split index.
pub fn write_index(path: &Path, rows: &[IndexRow]) -> Result<()> {
    write_csv(path, rows)
}

/// Read `classes.csv`.
pub fn read_classes(path: &Path) -> Result<Vec<ClassRow>> {
    read_csv(path)
}

/// Write `classes.csv`.
pub fn write_classes(path: &Path, rows: &[ClassRow]) -> Result<()> {
    write_csv(path, rows)
}

fn read_csv<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>> {
    let mut r = csv::Reader::from_path(path)
        .with_context(|| format!("cannot open index {}", path.display()))?;
    let mut out = Vec::new();
    for (i, rec) in r.deserialize().enumerate() {
        out.push(rec.with_context(|| format!("{}: bad row {}", path.display(), i + 2))?);
    }
    Ok(out)
}

fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    super::write_file(path, w.into_inner()?)
}

/// The split names present in an index folder (`<split>.csv`, except `classes.csv`),
/// in the order train, val, test, then others alphabetically.
pub fn splits_in(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "csv") {
            let stem = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if stem != "classes" {
                names.push(stem);
            }
        }
    }
    let rank = |s: &str| match s {
        "train" => 0,
        "val" => 1,
        "test" => 2,
        _ => 3,
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    Ok(names)
}

/// Rewrite a row path read from the artifact folder `from` so that it stays valid in a
/// sibling artifact folder: artifacts all live in one folder, so `images/x.jpg` in artifact
/// `A` becomes `../A/images/x.jpg`. Absolute and already-rebased paths are unchanged.
pub fn rebase_path(path: &str, from: &Path) -> String {
    if Path::new(path).is_absolute() || path.starts_with("../") {
        return path.to_string();
    }
    match from.file_name() {
        Some(name) => format!("../{}/{path}", name.to_string_lossy()),
        None => path.to_string(),
    }
}

/// Where an index row's image lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An encoded image file.
    File(PathBuf),
    /// Record `n` of a CIFAR-10 binary batch.
    CifarRecord(PathBuf, usize),
}

impl ImageRef {
    /// Resolve a row's `path` against the folder holding its index.
    pub fn resolve(path: &str, index_dir: &Path) -> Result<ImageRef> {
        let abs = |p: &str| {
            let pb = PathBuf::from(p);
            if pb.is_absolute() {
                pb
            } else {
                index_dir.join(pb)
            }
        };
        if let Some((file, rec)) = path.rsplit_once('#') {
            if file.ends_with(".bin") {
                let n: usize = rec
                    .parse()
                    .with_context(|| format!("bad record number in index path `{path}`"))?;
                return Ok(ImageRef::CifarRecord(abs(file), n));
            }
        }
        Ok(ImageRef::File(abs(path)))
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::File(p) => write!(f, "{}", p.display()),
            ImageRef::CifarRecord(p, n) => write!(f, "{} (record {n})", p.display()),
        }
    }
}
