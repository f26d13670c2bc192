//! Dataset indexes: one CSV per split (`path,label,class,hash`) and `classes.csv`.
//!
//! `path` is `dataset:<path>` (relative to the dataset folder the ingest stage read, with
//! `/`: the index names no place on this machine, so a project or dataset moved, or an
//! index pulled from another machine's store, still resolves against the folder the
//! manifest names now), relative to the folder holding the index (for images a stage
//! generated inside its own artifact), or absolute (indexes made before `dataset:`).
//! A `path` of the form `file.bin#N` is record `N` of a CIFAR-10 batch file. `hash` is the BLAKE3 of the image bytes, so a changed image changes
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

/// The prefix of an index path relative to the dataset folder.
pub const IN_DATASET: &str = "dataset:";

/// The index path of dataset file `rel` (relative to the dataset folder, with `/`).
pub fn dataset_path(rel: &str) -> String {
    format!("{IN_DATASET}{rel}")
}

/// An index path as a person reads it: a dataset file's path relative to its folder, other
/// paths as they are.
pub fn shown_path(path: &str) -> &str {
    path.strip_prefix(IN_DATASET).unwrap_or(path)
}

/// Rewrite a row path read from the artifact folder `from` so that it stays valid in a
/// sibling artifact folder: artifacts all live in one folder, so `images/x.jpg` in artifact
/// `A` becomes `../A/images/x.jpg`. Dataset, absolute and already-rebased paths are
/// unchanged.
pub fn rebase_path(path: &str, from: &Path) -> String {
    if Path::new(path).is_absolute() || path.starts_with("../") || path.starts_with(IN_DATASET) {
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
    /// Resolve a row's `path`: a `dataset:` path against `dataset` (the folder the
    /// ingest stage above reads, as the manifest names it now), a relative one against
    /// the folder holding its index.
    pub fn resolve(path: &str, index_dir: &Path, dataset: Option<&Path>) -> Result<ImageRef> {
        let (base, path) = match path.strip_prefix(IN_DATASET) {
            Some(rel) => {
                let Some(root) = dataset else {
                    anyhow::bail!(
                        "index path `{path}` is relative to a dataset folder, and no ingest stage above names one"
                    );
                };
                // Made by the ingest stage from its walk, so always below the folder; an
                // index that says otherwise is not one pipe wrote.
                let below = Path::new(rel)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                if rel.is_empty() || !below {
                    anyhow::bail!("index path `{path}` is not a path below the dataset folder");
                }
                (root, rel)
            }
            None => (index_dir, path),
        };
        let abs = |p: &str| {
            let pb = PathBuf::from(p);
            if pb.is_absolute() {
                pb
            } else {
                base.join(pb)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_path_resolves_against_the_dataset_the_index_folder_or_nothing() {
        let (idx, ds) = (Path::new("/store/a1"), Path::new("/data/tiny"));
        let file = |p: &str| ImageRef::File(PathBuf::from(p));
        let r = |p: &str| ImageRef::resolve(p, idx, Some(ds)).unwrap();
        assert_eq!(r("dataset:train/x.jpg"), file("/data/tiny/train/x.jpg"));
        assert_eq!(r("images/x.png"), file("/store/a1/images/x.png"));
        assert_eq!(r("/old/place/x.jpg"), file("/old/place/x.jpg"));
        assert_eq!(
            r("dataset:data_batch_1.bin#7"),
            ImageRef::CifarRecord(PathBuf::from("/data/tiny/data_batch_1.bin"), 7)
        );
        // A dataset path with no dataset folder known, or one that leaves it: refused.
        let e = ImageRef::resolve("dataset:x.jpg", idx, None).unwrap_err();
        assert!(e.to_string().contains("no ingest stage above"), "{e}");
        for bad in [
            "dataset:../x.jpg",
            "dataset:/etc/passwd",
            "dataset:",
            "dataset:a/../../b",
        ] {
            let e = ImageRef::resolve(bad, idx, Some(ds)).unwrap_err();
            assert!(e.to_string().contains("not a path below"), "{bad}: {e}");
        }
        // Split rebases the artifact's own files, never a dataset path.
        assert_eq!(rebase_path("dataset:a/b.jpg", idx), "dataset:a/b.jpg");
        assert_eq!(rebase_path("images/x.png", idx), "../a1/images/x.png");
        assert_eq!(shown_path("dataset:a/b.jpg"), "a/b.jpg");
    }
}
