//! Writing a file so that readers see the old content or the new, never a part: write a
//! temporary file in the same folder, fsync it, rename it over the target. Used by every
//! layer that writes (store records, checkpoints, training history), so it sits at the
//! bottom and depends on nothing of pipe's.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Write bytes to `p` atomically (temporary file in the same directory, fsync, rename).
pub fn write_atomic(p: &Path, bytes: &[u8]) -> Result<()> {
    let dir = p.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        p.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, p)
    })()
    .with_context(|| format!("cannot write {} ({} bytes)", p.display(), bytes.len()));
    if written.is_err() {
        // A full disk or a refused rename leaves no temporary file behind.
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Write JSON to `p` atomically.
pub fn write_json_atomic<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    write_atomic(p, &serde_json::to_vec_pretty(v)?)
}
