//! Trust in published artifacts. At publish, an artifact is made read-only and *sealed*:
//! `sealed/<hash>.json` records every file's size, mtime and BLAKE3. Before a cached
//! artifact is used (and on `pipe status`), each file is stat-ed against its seal, which
//! costs no reading; a file whose size or mtime moved is re-hashed, and a file whose content
//! changed (or that went missing, or appeared) makes the artifact *damaged*: it is treated
//! as missing, so the stage that made it runs again. `pipe verify` re-hashes everything.
//!
//! Not covered: damage that keeps a file's size and mtime (a flipped bit restored with
//! `touch -d`) until `pipe verify` reads the bytes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::atomic::write_json_atomic;
use crate::content::{content_files, hash_dir, hash_file, set_read_only, HashedFile};
use crate::ids::{ContentHash, StageKey};

/// One file of an artifact as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedFile {
    /// Path relative to the artifact, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// BLAKE3 of the content, hex.
    pub hash: String,
}

/// Every file of an artifact as published, and the stage keys that published it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seal {
    /// Content files in path order (the stage kind's record files are not content).
    pub files: Vec<SealedFile>,
    /// The stage keys that produced this content (one, unless two keys made the same
    /// bytes). Empty in seals written before keys were recorded.
    #[serde(default)]
    pub keys: Vec<StageKey>,
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub enum Health {
    /// Every file as published.
    Sound,
    /// What differs, one line per file.
    Damaged(Vec<String>),
}

fn mtime_ns(md: &fs::Metadata) -> i64 {
    md.mtime() * 1_000_000_000 + md.mtime_nsec()
}

/// Seal a published artifact folder that stage keys `keys` produced: record its files
/// (`hashed`: path, size, BLAKE3 as the store hashed them) and the keys, then make it
/// read-only. An artifact sealed already (another key made the same bytes) gains the keys;
/// a seal from before keys were recorded stays as it is (the keys that published it then
/// are not known, and vouching falls back to the kind's files). Seals are changed under
/// one lock, so two keys publishing the same bytes at once both end up in it.
pub fn seal(dir: &Path, seal_path: &Path, hashed: &[HashedFile], keys: &[StageKey]) -> Result<()> {
    let lock_path = seal_path.with_file_name(".lock");
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    lock.lock()?;
    if let Some(mut seal) = read_seal(seal_path) {
        let before = seal.keys.len();
        if before > 0 {
            for k in keys {
                if !seal.keys.contains(k) {
                    seal.keys.push(k.clone());
                }
            }
        }
        if seal.keys.len() != before {
            seal.keys.sort();
            write_json_atomic(seal_path, &seal)?;
        }
        return Ok(());
    }
    let mut files = Vec::with_capacity(hashed.len());
    for (rel, size, hash) in hashed {
        let md = fs::metadata(dir.join(rel))?;
        files.push(SealedFile {
            path: rel.clone(),
            size: *size,
            mtime_ns: mtime_ns(&md),
            hash: hash.clone(),
        });
    }
    set_read_only(dir, true)?;
    let mut keys = keys.to_vec();
    keys.sort();
    keys.dedup();
    write_json_atomic(seal_path, &Seal { files, keys })
}

/// The seal at `path`, if it reads.
pub fn read_seal(path: &Path) -> Option<Seal> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether artifact `dir` (sealed at `seal_path`) is what stage key `key`, of kind
/// `required` describes, made: its seal names the key, or — a seal from before keys were
/// recorded — it holds the files every artifact of that kind holds (`required`). `Err`
/// says why not.
pub fn vouches(
    dir: &Path,
    seal_path: &Path,
    key: &StageKey,
    required: &[&str],
) -> Result<(), String> {
    let seal = read_seal(seal_path);
    match seal {
        Some(s) if !s.keys.is_empty() => {
            if s.keys.contains(key) {
                Ok(())
            } else {
                Err(format!(
                    "{}: its seal says stage key(s) {} made it, not {}",
                    dir.display(),
                    s.keys
                        .iter()
                        .map(|k| k.short())
                        .collect::<Vec<_>>()
                        .join(", "),
                    key.short()
                ))
            }
        }
        _ => match required.iter().find(|f| !dir.join(f).is_file()) {
            None => Ok(()),
            Some(f) => Err(format!(
                "{}: no {f}, so it is not what this stage makes",
                dir.display()
            )),
        },
    }
}

/// Check an artifact against its seal. `full`: re-hash every file (`pipe verify`);
/// otherwise only files whose size or mtime moved. `records`: the top-level files its
/// stage kind declares as records, not content (they may come and go).
pub fn check(dir: &Path, seal: &Seal, full: bool, records: &[&str]) -> Result<Health> {
    let mut problems = Vec::new();
    let present = content_files(dir, records)?;
    let sealed: std::collections::HashSet<&str> =
        seal.files.iter().map(|s| s.path.as_str()).collect();
    for f in &present {
        if !sealed.contains(f.as_str()) {
            problems.push(format!(
                "{}: not part of the artifact as published",
                dir.join(f).display()
            ));
        }
    }
    for s in &seal.files {
        let p = dir.join(&s.path);
        let Ok(md) = fs::metadata(&p) else {
            problems.push(format!("{}: missing", p.display()));
            continue;
        };
        if !md.is_file() {
            // Never read: a FIFO or a device put in its place would not end.
            problems.push(format!(
                "{}: not a regular file any more (published as one)",
                p.display()
            ));
            continue;
        }
        let moved = md.len() != s.size || mtime_ns(&md) != s.mtime_ns;
        if (full || moved) && hash_file(&p)? != s.hash {
            problems.push(if md.len() != s.size {
                format!(
                    "{}: {} bytes, published with {} (truncated or rewritten)",
                    p.display(),
                    md.len(),
                    s.size
                )
            } else {
                format!("{}: content changed since it was published", p.display())
            });
        }
    }
    Ok(if problems.is_empty() {
        Health::Sound
    } else {
        Health::Damaged(problems)
    })
}

/// Check one file of an artifact (`rel`, relative with `/`) fully against the seal: it
/// must be listed, a regular file reached through no link, and have the sealed BLAKE3.
/// `Err` says what is wrong.
pub fn check_file(dir: &Path, seal: &Seal, rel: &str) -> Result<(), String> {
    let Some(s) = seal.files.iter().find(|f| f.path == rel) else {
        return Err(format!("{rel} is not a file of the artifact as published"));
    };
    let mut p = dir.to_path_buf();
    for part in rel.split('/') {
        p.push(part);
        let md = fs::symlink_metadata(&p).map_err(|_| format!("{}: missing", p.display()))?;
        if md.file_type().is_symlink() {
            return Err(format!("{}: a link (published as a file)", p.display()));
        }
    }
    if !fs::symlink_metadata(&p).is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "{}: not a regular file any more (published as one)",
            p.display()
        ));
    }
    match hash_file(&p) {
        Ok(h) if h == s.hash => Ok(()),
        Ok(_) => Err(format!(
            "{}: content changed since it was published",
            p.display()
        )),
        Err(e) => Err(format!("{e:#}")),
    }
}

/// The health of a published artifact in folder `dir` whose seal is (or would be) at
/// `seal_path`: checked against the seal ([`check`]); an artifact published before seals
/// existed is re-hashed against its name, `output`.
pub fn health(
    dir: &Path,
    output: &ContentHash,
    seal_path: &Path,
    full: bool,
    records: &[&str],
) -> Result<Health> {
    match read_seal(seal_path) {
        Some(seal) => check(dir, &seal, full, records),
        None => Ok(
            if hash_dir(dir, records).is_ok_and(|(h, _)| h == output.as_str()) {
                Health::Sound
            } else {
                Health::Damaged(vec![format!(
                    "{}: content does not match its hash (and it has no seal)",
                    dir.display()
                )])
            },
        ),
    }
}
