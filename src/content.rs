//! What an artifact's content is, and its hash: every file of the folder (relative path,
//! size, BLAKE3), in path order, except the top-level *record* files its stage kind
//! declares (training's timings: how long a stage took is not what it made, and leaving it
//! out lets a byte-identical re-run cut off early). The store hashes with it when it
//! publishes and integrity re-checks with it, so the two can never disagree about what an
//! artifact holds. A leaf: it depends on nothing of pipe's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One file as hashed: (relative path with `/`, size, BLAKE3 hex).
pub type HashedFile = (String, u64, String);

/// Every file below `dir/rel`, relative to `dir`, in path order.
fn files_sorted(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        if e.file_type()?.is_dir() {
            files_sorted(dir, &r, out)?;
        } else {
            out.push(r);
        }
    }
    Ok(())
}

/// The content files of an artifact folder, relative with `/`, in path order: every file
/// but the top-level `records`.
pub fn content_files(dir: &Path, records: &[&str]) -> Result<Vec<String>> {
    let mut files = Vec::new();
    files_sorted(dir, Path::new(""), &mut files)?;
    Ok(files
        .into_iter()
        .map(|f| f.to_string_lossy().replace('\\', "/"))
        .filter(|f| !records.contains(&f.as_str()))
        .collect())
}

/// BLAKE3 of one file, hex (large files memory-mapped and hashed in parallel).
pub fn hash_file(p: &Path) -> Result<String> {
    Ok(hash_file_raw(p)?.to_hex().to_string())
}

fn hash_file_raw(p: &Path) -> Result<blake3::Hash> {
    let md = fs::metadata(p).with_context(|| format!("cannot read {}", p.display()))?;
    if !md.is_file() {
        anyhow::bail!("{} is not a regular file: it is not read", p.display());
    }
    let mut h = blake3::Hasher::new();
    if fs::metadata(p)?.len() > 1 << 20 {
        h.update_mmap_rayon(p)?;
    } else {
        h.update(&fs::read(p).with_context(|| format!("cannot read {}", p.display()))?);
    }
    Ok(h.finalize())
}

/// The content hash of an artifact folder, and each content file as hashed.
pub fn hash_dir(dir: &Path, records: &[&str]) -> Result<(String, Vec<HashedFile>)> {
    let mut h = blake3::Hasher::new();
    h.update(b"pipe-artifact-v1\0");
    let files = content_files(dir, records)?;
    let mut each = Vec::with_capacity(files.len());
    for rel in files {
        let full = dir.join(&rel);
        let len = fs::metadata(&full)?.len();
        let fh = hash_file_raw(&full)?;
        h.update(rel.as_bytes());
        h.update(&[0]);
        h.update(&len.to_le_bytes());
        h.update(fh.as_bytes());
        each.push((rel, len, fh.to_hex().to_string()));
    }
    Ok((h.finalize().to_hex().to_string(), each))
}

/// Fsync every file and folder below `dir`, then `dir` itself: what it holds is on disk,
/// not only in the page cache. A folder is published (renamed into place, then sealed)
/// only after this, so a power cut can never leave a sealed artifact whose files kept
/// their sizes but lost their data. Every file's write-back is started first, then each
/// is waited for (on the pool's threads), so many small files (a generated dataset's
/// images) cost one round of writes, not one round trip each.
pub fn sync_tree(dir: &Path) -> Result<()> {
    use rayon::prelude::*;
    let mut files = Vec::new();
    files_sorted(dir, Path::new(""), &mut files)?;
    let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    files.par_iter().for_each(|p| {
        if let Ok(f) = fs::File::open(p) {
            start_writeback(&f);
        }
    });
    files
        .par_iter()
        .try_for_each(|p| fsync(p).with_context(|| format!("cannot sync {}", p.display())))?;
    // Folders after what they hold, deepest first.
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent())
        .flat_map(|d| d.ancestors().take_while(|a| a.starts_with(dir)))
        .map(Path::to_path_buf)
        .collect();
    dirs.push(dir.to_path_buf());
    dirs.sort_by(|a, b| {
        (b.components().count().cmp(&a.components().count())).then_with(|| a.cmp(b))
    });
    dirs.dedup();
    for d in &dirs {
        sync_dir(d)?;
    }
    Ok(())
}

/// Fsync folder `dir`: the names created, renamed or removed in it are on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fsync(dir).with_context(|| format!("cannot sync folder {}", dir.display()))
}

/// Fsync the file or folder at `p` (opened read-only: fsync needs no write access; and
/// non-blocking, so a FIFO cannot hang it). A file system that cannot sync at all (EINVAL,
/// ENOTSUP: some shared-folder and FUSE mounts, for folders above all) leaves nothing
/// more to do, as PostgreSQL and SQLite take it; any other error (EIO, ENOSPC) is one.
pub fn fsync(p: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    #[cfg(test)]
    tests::SYNCED.lock().unwrap().push(p.to_path_buf());
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p)?;
    match f.sync_all() {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => Ok(()),
        r => r,
    }
}

/// Start writing `f`'s dirty pages to disk without waiting for them, so that a later
/// fsync finds the work begun (it overlaps other work, or other files' writes).
pub fn start_writeback(f: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `f` owns for the call; no memory is passed.
    // A failure only leaves the work to the fsync, so its result is not needed.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Total size of the files under `p`.
pub fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => total += dir_size(&path),
                Ok(_) => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    total
}

/// Make a folder tree read-only (files 0444, folders 0555) or writable again (0644/0755),
/// so that it can be deleted.
pub fn set_read_only(dir: &Path, ro: bool) -> Result<()> {
    let mode = |is_dir: bool| match (ro, is_dir) {
        (true, true) => 0o555,
        (true, false) => 0o444,
        (false, true) => 0o755,
        (false, false) => 0o644,
    };
    // Writable: folders first (to enter them); read-only: contents first.
    if !ro {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode(true)))?;
    }
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if e.file_type()?.is_dir() {
            set_read_only(&p, ro)?;
        } else {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode(false)))?;
        }
    }
    if ro {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode(true)))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    /// What [`super::fsync`] synced, in the order asked (for tests of durability order).
    pub(crate) static SYNCED: std::sync::Mutex<Vec<std::path::PathBuf>> =
        std::sync::Mutex::new(Vec::new());

    #[test]
    fn a_file_system_that_cannot_sync_is_no_error_and_a_missing_file_is() {
        // procfs has no fsync: EINVAL, for a file and for a folder.
        assert!(super::fsync(Path::new("/proc/self/status")).is_ok());
        assert!(super::sync_dir(Path::new("/proc/self")).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let err = super::sync_dir(&dir.path().join("gone")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot sync folder"), "{err:#}");
        assert!(format!("{err:#}").contains("gone"), "{err:#}");
    }

    /// The paths under `root` fsynced since the last call (other tests' are left).
    pub(crate) fn take_synced(root: &Path) -> Vec<std::path::PathBuf> {
        let mut all = SYNCED.lock().unwrap();
        let (mine, others) = all.drain(..).partition(|p| p.starts_with(root));
        *all = others;
        mine
    }
}
