//! Trust in published artifacts. At publish, an artifact is made read-only and *sealed*:
//! `sealed/<hash>.json` records every file's size, mtime, ctime and BLAKE3. Before a cached
//! artifact is used (and on `pipe status`), each file is stat-ed against its seal, which
//! costs no reading; a file whose size or either time moved is re-hashed, and a file whose
//! content changed (or that went missing, or appeared) makes the artifact *damaged*: it is
//! treated as missing, so the stage that made it runs again. `pipe verify` re-hashes
//! everything. The ctime is what no program can set back: damage with the mtime restored
//! (`touch -d`) moves it. A file re-hashed sound whose times had moved (a store copied with
//! `cp -a`, a `touch`) has its seal's times brought up to date by the next command that
//! uses it to run stages (`run`, `run-stage`, `pull`) or by `pipe verify` ([`refresh`]),
//! so it is not read again on every use.
//!
//! Not covered: damage that keeps a file's stat whole (a write to the disk under the file
//! system, a FUSE file system that copies the mtime into the ctime) until `pipe verify`
//! reads the bytes; seals written before ctimes were recorded, as before.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result};
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
    /// Status change time, ns since the epoch (absent in seals from before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime_ns: Option<i64>,
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

use super::fingerprint::{ctime_ns, mtime_ns};

/// A file of an artifact re-hashed sound though its times had moved, as stat-ed before
/// the hash.
#[derive(Debug, Clone)]
pub struct Reproven {
    path: String,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
    /// When the check began, before its first stat: a ctime within a clock tick of it
    /// may be followed by a write that leaves it as it is.
    checked_ns: i64,
}

/// Seal a published artifact folder that stage keys `keys` produced: record its files
/// (`hashed`: path, size, BLAKE3 as the store hashed them) and the keys, then make it
/// read-only. An artifact sealed already (another key made the same bytes) gains the keys;
/// a seal from before keys were recorded stays as it is (the keys that published it then
/// are not known, and vouching falls back to the kind's files). Seals are changed under
/// one lock, so two keys publishing the same bytes at once both end up in it. `fresh`: the
/// folder was just put in place (none was there), so a seal found is one its earlier
/// folder left (removed by hand, or a crash between the two steps of removing it): it is
/// written anew, keeping its keys (they made these bytes too).
pub fn seal(
    dir: &Path,
    seal_path: &Path,
    hashed: &[HashedFile],
    keys: &[StageKey],
    fresh: bool,
) -> Result<()> {
    let _lock = lock_seals(seal_path.parent().unwrap_or(Path::new(".")))?;
    let mut keys = keys.to_vec();
    let found = read_seal(seal_path);
    if let (true, Some(old)) = (fresh, &found) {
        keys.extend(old.keys.iter().cloned());
    }
    if let Some(mut seal) = found.filter(|_| !fresh) {
        let before = seal.keys.len();
        if before > 0 {
            for k in &keys {
                if !seal.keys.contains(k) {
                    seal.keys.push(k.clone());
                }
            }
        }
        if seal.keys.len() != before {
            seal.keys.sort();
            write_json_durable(seal_path, &seal)?;
        }
        return Ok(());
    }
    // Read-only first: that moves each file's ctime, which the seal then records.
    set_read_only(dir, true)?;
    let mut files = Vec::with_capacity(hashed.len());
    for (rel, size, hash) in hashed {
        let md = fs::metadata(dir.join(rel))?;
        files.push(SealedFile {
            path: rel.clone(),
            size: *size,
            mtime_ns: mtime_ns(&md),
            ctime_ns: Some(ctime_ns(&md)),
            hash: hash.clone(),
        });
    }
    keys.sort();
    keys.dedup();
    write_json_durable(seal_path, &Seal { files, keys })
}

/// Write a seal atomically and durably: the rename is on disk too when this returns (its
/// folder is fsynced), so it cannot be lost in a power cut that keeps the key record
/// written after it, which trusts it.
fn write_json_durable<T: Serialize>(p: &Path, v: &T) -> Result<()> {
    write_json_atomic(p, v)?;
    crate::content::sync_dir(p.parent().unwrap_or(Path::new(".")))
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
/// otherwise only files whose size or a time moved. `records`: the top-level files its
/// stage kind declares as records, not content (they may come and go).
pub fn check(dir: &Path, seal: &Seal, full: bool, records: &[&str]) -> Result<Health> {
    Ok(check_reproving(dir, seal, full, records)?.0)
}

/// [`check`], and the files it re-hashed sound though a time had moved, for [`refresh`].
pub fn check_reproving(
    dir: &Path,
    seal: &Seal,
    full: bool,
    records: &[&str],
) -> Result<(Health, Vec<Reproven>)> {
    let mut problems = Vec::new();
    let mut reproven = Vec::new();
    let checked_ns = super::fingerprint::now_ns();
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
        let (mtime, ctime) = (mtime_ns(&md), ctime_ns(&md));
        let moved =
            md.len() != s.size || mtime != s.mtime_ns || s.ctime_ns.is_some_and(|c| c != ctime);
        if !(full || moved) {
            continue;
        }
        if hash_file(&p)? == s.hash {
            if moved && md.len() == s.size {
                reproven.push(Reproven {
                    path: s.path.clone(),
                    mtime_ns: mtime,
                    ctime_ns: ctime,
                    ino: md.ino(),
                    dev: md.dev(),
                    checked_ns,
                });
            }
        } else {
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
    let health = if problems.is_empty() {
        Health::Sound
    } else {
        Health::Damaged(problems)
    };
    Ok((health, reproven))
}

/// The lock every change of a seal is made under (`<sealed>/.lock`, created if need be),
/// held until the returned file is dropped.
pub fn lock_seals(sealed: &Path) -> Result<fs::File> {
    fs::create_dir_all(sealed)?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(sealed.join(".lock"))
        .with_context(|| format!("cannot open {}", sealed.join(".lock").display()))?;
    lock.lock()?;
    Ok(lock)
}

/// Bring the seal at `seal_path` of artifact `dir` up to date for files [`check_reproving`]
/// found sound though their times had moved: each takes the times it had when it was
/// hashed, if it is still that regular file (no link), with those times, and its ctime is
/// not within a clock tick of the check's start (a write in that tick could have left it
/// as it was). Under the seal's lock, on the seal as it is then.
pub fn refresh(dir: &Path, seal_path: &Path, reproven: &[Reproven]) -> Result<()> {
    if reproven.is_empty() {
        return Ok(());
    }
    let _lock = lock_seals(seal_path.parent().unwrap_or(Path::new(".")))?;
    let Some(mut seal) = read_seal(seal_path) else {
        return Ok(());
    };
    let mut changed = false;
    for r in reproven {
        let Some(s) = seal.files.iter_mut().find(|f| f.path == r.path) else {
            continue;
        };
        let Ok(md) = fs::symlink_metadata(dir.join(&r.path)) else {
            continue;
        };
        let same = md.is_file()
            && md.len() == s.size
            && (md.ino(), md.dev()) == (r.ino, r.dev)
            && mtime_ns(&md) == r.mtime_ns
            && ctime_ns(&md) == r.ctime_ns;
        if same && !super::fingerprint::racy(r.ctime_ns, r.checked_ns) {
            s.mtime_ns = r.mtime_ns;
            s.ctime_ns = Some(r.ctime_ns);
            changed = true;
        }
    }
    if changed {
        write_json_atomic(seal_path, &seal)?;
    }
    Ok(())
}

/// Check one file of an artifact (`rel`, relative with `/`) fully against the seal: it
/// must be listed, a regular file reached through no link, and have the sealed BLAKE3.
/// `Err` says what is wrong.
pub fn check_file(dir: &Path, seal: &Seal, rel: &str) -> Result<(), String> {
    open_checked(dir, seal, rel).map(drop)
}

/// File `rel` of the artifact in `dir`, opened beneath it through no link
/// ([`open_beneath`]) and hashed from that handle against the seal: the handle, rewound,
/// reads exactly the bytes that were checked, whatever is put at the path after.
pub fn open_checked(dir: &Path, seal: &Seal, rel: &str) -> Result<fs::File, String> {
    use std::io::{Seek, SeekFrom};
    let Some(s) = seal.files.iter().find(|f| f.path == rel) else {
        return Err(format!("{rel} is not a file of the artifact as published"));
    };
    let p = dir.join(rel);
    let mut f = open_beneath(dir, rel).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => format!("{}: a link on the way (published as a file)", p.display()),
        Some(libc::ENOTDIR) => format!(
            "{}: a link, or a file, where a folder of it was published",
            p.display()
        ),
        Some(libc::ENOENT) => format!("{}: missing", p.display()),
        _ => format!("cannot read {}: {e}", p.display()),
    })?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "{}: not a regular file any more (published as one)",
            p.display()
        ));
    }
    let mut h = blake3::Hasher::new();
    let len = f.metadata().map_or(0, |m| m.len());
    if len > 1 << 20 {
        // As `hash_file` hashes a large file: mapped, on every core.
        // SAFETY: the mapping is only read, while `f` is open; a write to the file meanwhile
        // (the store's files are read-only) could change what is hashed, not what memory
        // is touched, as with blake3's own `update_mmap_rayon`.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        h.update_rayon(&map);
    } else {
        h.update_reader(&mut f)
            .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    }
    if h.finalize().to_hex().as_str() != s.hash {
        return Err(format!(
            "{}: content changed since it was published",
            p.display()
        ));
    }
    f.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    Ok(f)
}

/// Open `rel` (`/`-separated, no `.`, `..` or empty part) beneath folder `dir`, one
/// component at a time with `openat(O_NOFOLLOW)`: a link anywhere on the way, `dir`
/// included, fails (`ELOOP`, `ENOTDIR`) instead of being followed, even when it is put
/// there while this runs. The last component is opened without waiting (a FIFO does not
/// block) and not as a terminal; the caller checks what kind of file it got.
pub fn open_beneath(dir: &Path, rel: &str) -> std::io::Result<fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(refuse());
    }
    let mut cur = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)?;
    for (i, part) in parts.iter().enumerate() {
        let name = std::ffi::CString::new(*part).map_err(|_| refuse())?;
        let kind = match i + 1 == parts.len() {
            true => libc::O_NONBLOCK | libc::O_NOCTTY,
            false => libc::O_DIRECTORY,
        };
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | kind;
        // SAFETY: `cur` is an open folder for the whole call and `name` is NUL-terminated.
        let fd = unsafe { libc::openat(cur.as_raw_fd(), name.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened by this call and nothing else owns it.
        cur = unsafe { fs::File::from_raw_fd(fd) };
    }
    Ok(cur)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sealed one-file artifact in `tmp` whose file then had its times moved with its
    /// bytes kept: (dir, seal path).
    fn touched(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let dir = tmp.join("a");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f.bin"), b"bytes").unwrap();
        let seal_path = tmp.join("sealed").join("a.json");
        fs::create_dir_all(seal_path.parent().unwrap()).unwrap();
        let hashed = vec![(
            "f.bin".to_string(),
            5,
            hash_file(&dir.join("f.bin")).unwrap(),
        )];
        seal(&dir, &seal_path, &hashed, &[], false).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        set_read_only(&dir, false).unwrap();
        fs::File::options()
            .write(true)
            .open(dir.join("f.bin"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        (dir, seal_path)
    }

    #[test]
    fn a_checked_handle_reads_what_was_checked_and_no_link_on_the_way_is_followed() {
        use std::io::Read;
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("sub/f.bin"), b"published").unwrap();
        fs::write(tmp.path().join("secret"), b"not of the store").unwrap();
        let seal_path = tmp.path().join("sealed/a.json");
        fs::create_dir_all(seal_path.parent().unwrap()).unwrap();
        let hashed = vec![(
            "sub/f.bin".to_string(),
            9,
            hash_file(&dir.join("sub/f.bin")).unwrap(),
        )];
        seal(&dir, &seal_path, &hashed, &[], false).unwrap();
        set_read_only(&dir, false).unwrap();
        let seal = read_seal(&seal_path).unwrap();
        let read = |mut f: fs::File| {
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            s
        };
        // Checked, then the path replaced by a link out of the store: the handle still
        // reads the bytes it checked.
        let f = open_checked(&dir, &seal, "sub/f.bin").unwrap();
        fs::rename(dir.join("sub/f.bin"), tmp.path().join("kept")).unwrap();
        symlink(tmp.path().join("secret"), dir.join("sub/f.bin")).unwrap();
        assert_eq!(read(f), "published");
        // Opened now through that link: refused, by name.
        let why = open_checked(&dir, &seal, "sub/f.bin").unwrap_err();
        assert!(why.contains("a link on the way"), "{why}");
        let e = open_beneath(&dir, "sub/f.bin").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        // A link as a folder on the way, and as the artifact folder itself.
        fs::remove_file(dir.join("sub/f.bin")).unwrap();
        fs::rename(tmp.path().join("kept"), dir.join("sub/f.bin")).unwrap();
        assert_eq!(
            read(open_checked(&dir, &seal, "sub/f.bin").unwrap()),
            "published"
        );
        fs::rename(dir.join("sub"), tmp.path().join("sub")).unwrap();
        symlink(tmp.path().join("sub"), dir.join("sub")).unwrap();
        let why = open_checked(&dir, &seal, "sub/f.bin").unwrap_err();
        assert!(why.contains("a link"), "{why}");
        // A file where a folder of it was.
        fs::remove_file(dir.join("sub")).unwrap();
        fs::write(dir.join("sub"), b"x").unwrap();
        let why = open_checked(&dir, &seal, "sub/f.bin").unwrap_err();
        assert!(why.contains("where a folder of it was published"), "{why}");
        fs::remove_file(dir.join("sub")).unwrap();
        symlink(tmp.path().join("sub"), dir.join("sub")).unwrap();
        let linked = tmp.path().join("b");
        symlink(&dir, &linked).unwrap();
        assert!(open_beneath(&linked, "sub").is_err());
        // Parts that leave the folder, and a FIFO (opened without waiting, then refused).
        for bad in ["../secret", "./sub", "", "sub//f.bin"] {
            assert_eq!(
                open_beneath(&dir, bad).unwrap_err().raw_os_error(),
                Some(libc::EINVAL),
                "{bad}"
            );
        }
        fs::remove_file(dir.join("sub")).unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        let fifo = std::ffi::CString::new(dir.join("sub/f.bin").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let why = open_checked(&dir, &seal, "sub/f.bin").unwrap_err();
        assert!(why.contains("not a regular file"), "{why}");
    }

    #[test]
    fn a_file_re_hashed_sound_is_brought_up_to_date_only_when_nothing_could_have_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, seal_path) = touched(tmp.path());
        let seal = read_seal(&seal_path).unwrap();
        let (health, reproven) = check_reproving(&dir, &seal, false, &[]).unwrap();
        assert_eq!(health, Health::Sound);
        assert_eq!(reproven.len(), 1);
        let r = &reproven[0];
        let sealed_now = || read_seal(&seal_path).unwrap().files[0].clone();
        let before = sealed_now();
        // Checked within a tick of the file's last change: left as it was.
        let racy = Reproven {
            checked_ns: r.ctime_ns + 1_000_000,
            ..r.clone()
        };
        refresh(&dir, &seal_path, &[racy]).unwrap();
        assert_eq!(sealed_now(), before);
        // Another inode with the same times now: left as it was.
        let other = Reproven {
            checked_ns: r.ctime_ns + 10_000_000_000,
            ino: r.ino + 1,
            ..r.clone()
        };
        refresh(&dir, &seal_path, &[other]).unwrap();
        assert_eq!(sealed_now(), before);
        // The file as it was hashed, long after its change: the seal takes its times.
        let proven = Reproven {
            checked_ns: r.ctime_ns + 10_000_000_000,
            ..r.clone()
        };
        refresh(&dir, &seal_path, std::slice::from_ref(&proven)).unwrap();
        let after = sealed_now();
        assert_eq!(
            (after.mtime_ns, after.ctime_ns, &after.hash),
            (r.mtime_ns, Some(r.ctime_ns), &before.hash)
        );
        let seal = read_seal(&seal_path).unwrap();
        let (health, reproven) = check_reproving(&dir, &seal, false, &[]).unwrap();
        assert_eq!((health, reproven.len()), (Health::Sound, 0));
        // A file changed after the check (its ctime moved): not taken.
        fs::write(dir.join("f.bin"), b"other").unwrap();
        let seal_before = fs::read(&seal_path).unwrap();
        refresh(
            &dir,
            &seal_path,
            &[Reproven {
                mtime_ns: after.mtime_ns,
                ..proven
            }],
        )
        .unwrap();
        assert_eq!(fs::read(&seal_path).unwrap(), seal_before);
    }
}
