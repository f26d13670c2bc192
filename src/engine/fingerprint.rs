//! Content fingerprints of external inputs (dataset folders), with a stat cache.
//!
//! A folder's fingerprint is the BLAKE3 of every file's relative path and content hash.
//! Hashing 120,000 JPEGs on every run would take seconds, so each file's hash is cached
//! under (size, mtime in ns, inode): an unchanged tree costs one parallel `stat` walk.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::store::{write_atomic, Store};

/// The fingerprint of a folder.
#[derive(Debug, Clone)]
pub struct TreeFingerprint {
    /// The folder.
    pub root: PathBuf,
    /// Hash over all files.
    pub hash: String,
    /// (relative path with `/`, content hash), in `stages::cmp_paths` order (the walk's).
    pub files: Vec<(String, [u8; 32])>,
    /// How many files had to be read (not found in the stat cache).
    pub hashed: usize,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry<'a> {
    /// Borrowed from the cache file's bytes when read: no allocation per file.
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    size: u64,
    mtime_ns: i64,
    ino: u64,
    hash: [u8; 32],
}

struct Stat {
    rel: String,
    size: u64,
    mtime_ns: i64,
    ino: u64,
    /// A regular file (or a link to one): its content is read and hashed. Anything else
    /// (a FIFO, a device, a socket) is never opened: it counts by its kind alone, and the
    /// stage that would read it as data refuses it by name.
    regular: bool,
}

/// Every file below `rel` (in `cmp_paths` order), and the folders with no file below them.
/// Folders nested deeper than this are refused (a symlink loop would never end).
const MAX_DEPTH: usize = 64;

fn walk(root: &Path, rel: &str) -> Result<(Vec<Stat>, Vec<String>)> {
    if rel.matches('/').count() >= MAX_DEPTH {
        anyhow::bail!(
            "{}: folders nested more than {MAX_DEPTH} deep (a symbolic link to a folder above it?)",
            root.join(rel).display()
        );
    }
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut entries: Vec<(std::ffi::OsString, fs::DirEntry)> = fs::read_dir(&dir)
        .with_context(|| format!("cannot read directory {}", dir.display()))?
        .map(|e| e.map(|e| (e.file_name(), e)))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read directory {}", dir.display()))?;
    // Sorted per directory, so the whole walk comes out in `cmp_paths` order.
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let nested: Vec<Found> = entries
        .par_iter()
        .map(|(name, e)| -> Result<Found> {
            let name = name.to_string_lossy();
            let mut r = String::with_capacity(rel.len() + 1 + name.len());
            if !rel.is_empty() {
                r.push_str(rel);
                r.push('/');
            }
            r.push_str(&name);
            // `DirEntry::metadata` stats relative to the open directory (no path walk);
            // symlinks are followed with a full `stat`.
            let md = match e.file_type() {
                Ok(t) if t.is_symlink() => fs::metadata(e.path()),
                _ => e.metadata(),
            }
            .with_context(|| format!("cannot stat {}", e.path().display()))?;
            if md.is_dir() {
                let (files, mut empty) = walk(root, &r)?;
                if files.is_empty() {
                    empty.push(r);
                }
                Ok(Found::Dir(files, empty))
            } else {
                Ok(Found::File(Stat {
                    rel: r,
                    size: md.len(),
                    mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
                    ino: md.ino(),
                    regular: md.is_file(),
                }))
            }
        })
        .collect::<Result<_>>()?;
    let mut files = Vec::with_capacity(nested.len());
    let mut empty = Vec::new();
    for f in nested {
        match f {
            Found::File(st) => files.push(st),
            Found::Dir(f, e) => {
                files.extend(f);
                empty.extend(e);
            }
        }
    }
    Ok((files, empty))
}

/// One entry of a folder: a file, or what a subfolder holds.
enum Found {
    File(Stat),
    Dir(Vec<Stat>, Vec<String>),
}

fn cache_file(store: &Store, root: &Path) -> PathBuf {
    let id = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
    store
        .root()
        .join("statcache")
        .join(format!("{}.bin", &id[..32]))
}

/// Forget what the stat cache of `root` says of `file` (a path below it): the next
/// fingerprint reads it again. For a file whose bytes changed while its size, time and
/// inode did not.
pub fn forget(store: &Store, root: &Path, file: &Path) -> Result<()> {
    let Ok(root) = root.canonicalize() else {
        return Ok(());
    };
    let file = file.canonicalize().unwrap_or_else(|_| file.to_path_buf());
    let Ok(rel) = file.strip_prefix(&root) else {
        return Ok(());
    };
    let rel = rel.to_string_lossy().replace('\\', "/");
    let cpath = cache_file(store, &root);
    let Ok(bytes) = fs::read(&cpath) else {
        return Ok(());
    };
    let Ok(mut entries) = postcard::from_bytes::<Vec<CacheEntry>>(&bytes) else {
        return Ok(());
    };
    entries.retain(|e| e.path != rel);
    write_atomic(&cpath, &postcard::to_stdvec(&entries)?)
}

/// Fingerprint `root`, reading only files the stat cache does not vouch for (`rehash`:
/// reading every file, as `--force` of the stage that reads it asks).
pub fn fingerprint_tree(store: &Store, root: &Path, rehash: bool) -> Result<TreeFingerprint> {
    let root = root
        .canonicalize()
        .with_context(|| format!("dataset folder {} does not exist", root.display()))?;
    if !root.is_dir() {
        anyhow::bail!("dataset root {} is not a directory", root.display());
    }
    let (stats, empty) = walk(&root, "")?;

    let cpath = cache_file(store, &root);
    // The cache is written in walk order, so an unchanged tree matches it entry by entry;
    // anything else falls back to a lookup by path.
    let cache_bytes = fs::read(&cpath).unwrap_or_default();
    let cached: Vec<CacheEntry> = postcard::from_bytes(&cache_bytes).unwrap_or_default();
    let mut by_path: Option<std::collections::HashMap<&str, &CacheEntry>> = None;
    let mut matched: Vec<Option<[u8; 32]>> = Vec::with_capacity(stats.len());
    let mut in_order = cached.len() == stats.len();
    for (i, s) in stats.iter().enumerate() {
        let entry = match cached.get(i) {
            Some(c) if c.path == s.rel => Some(c),
            _ => by_path
                .get_or_insert_with(|| cached.iter().map(|c| (c.path.as_ref(), c)).collect())
                .get(s.rel.as_str())
                .copied()
                .inspect(|_| in_order = false),
        };
        let hit = entry
            .filter(|_| !rehash)
            .filter(|c| c.size == s.size && c.mtime_ns == s.mtime_ns && c.ino == s.ino);
        matched.push(hit.map(|c| c.hash));
    }

    let hashes: Vec<([u8; 32], bool)> = stats
        .par_iter()
        .zip(matched.par_iter())
        .map(|(s, m)| -> Result<([u8; 32], bool)> {
            if let Some(h) = m {
                return Ok((*h, false));
            }
            if !s.regular {
                return Ok((*blake3::hash(b"pipe-special-file\0").as_bytes(), false));
            }
            let p = root.join(&s.rel);
            let bytes = crate::data::read_known_regular(&p, s.size)?;
            Ok((*blake3::hash(&bytes).as_bytes(), true))
        })
        .collect::<Result<_>>()?;

    let hashed = hashes.iter().filter(|(_, fresh)| *fresh).count();
    let mut h = blake3::Hasher::new();
    // The same bytes as one `update` per piece, gathered first: one call, not 360,000.
    let mut all = Vec::with_capacity(16 + stats.iter().map(|s| s.rel.len() + 33).sum::<usize>());
    all.extend_from_slice(b"pipe-tree-v1\0");
    for (s, (fh, _)) in stats.iter().zip(&hashes) {
        all.extend_from_slice(s.rel.as_bytes());
        all.push(0);
        all.extend_from_slice(fh);
    }
    h.update(&all);
    // Empty folders are part of a dataset's layout (an image-folder class with no images is
    // an error): they change the fingerprint, so a run sees them instead of a cached output.
    if !empty.is_empty() {
        h.update(b"empty-dirs\0");
        for d in &empty {
            h.update(d.as_bytes());
            h.update(&[0]);
        }
    }
    if (hashed > 0 || !in_order) && !store.is_read_only() {
        let entries: Vec<CacheEntry> = stats
            .iter()
            .zip(&hashes)
            .map(|(s, (hash, _))| CacheEntry {
                path: std::borrow::Cow::Borrowed(s.rel.as_str()),
                size: s.size,
                mtime_ns: s.mtime_ns,
                ino: s.ino,
                hash: *hash,
            })
            .collect();
        // The stat cache is an optimisation: failing to write it is not an error.
        if let Ok(bytes) = postcard::to_stdvec(&entries) {
            let _ = write_atomic(&cpath, &bytes);
        }
    }
    let files = stats
        .into_iter()
        .zip(hashes)
        .map(|(s, (hash, _))| (s.rel, hash))
        .collect();
    Ok(TreeFingerprint {
        root,
        hash: h.finalize().to_hex().to_string(),
        files,
        hashed,
    })
}
