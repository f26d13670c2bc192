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
    // A name no other writer of `p` uses: not another thread of this process (the count),
    // nor a process with the same id on another machine of a shared store (the random bits).
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // The target's name is not in it: a reader that picks files by name (TensorBoard
    // loads any file whose name holds `tfevents`) must not take a part-written one.
    let tmp = dir.join(format!(
        ".pipe-write.{}-{}-{:08x}.tmp",
        std::process::id(),
        SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        rand::random::<u32>()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_of_one_file_on_many_threads_each_replace_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let bodies: Vec<Vec<u8>> = (0..8u8).map(|t| vec![b'a' + t; 64 * 1024]).collect();
        std::thread::scope(|s| {
            for body in &bodies {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..40 {
                        write_atomic(p, body).unwrap();
                        // Whatever is there is one writer's whole file.
                        let now = fs::read(p).unwrap();
                        assert!(bodies_contain(&now), "a mixed or cut file");
                    }
                });
            }
            fn bodies_contain(b: &[u8]) -> bool {
                b.len() == 64 * 1024 && b.iter().all(|&c| c == b[0])
            }
        });
        assert!(bodies.contains(&fs::read(&p).unwrap()));
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
    }
}
