//! Content fingerprints of external inputs (dataset folders), with a stat cache.
//!
//! A folder's fingerprint is the BLAKE3 of every file's relative path and content hash.
//! Hashing 120,000 JPEGs on every run would take seconds, so each file's hash is cached
//! under (size, mtime and ctime in ns, inode): an unchanged tree costs one parallel `stat`
//! walk. The ctime is what no program can set back on the file systems that keep one
//! (ext4, XFS, Btrfs, tmpfs, NFS: not FAT, nor FUSE ones that copy the mtime into it):
//! content rewritten in place with its mtime restored (`touch -r`, `cp -p`, a tool that
//! keeps times) still moves it. A file whose ctime falls within a clock tick of the walk
//! (the "racy" case: a second write in the same tick would leave its times as they were) is
//! cached as unproven, and read again by the next walk. The device number is left out: a
//! network file system's is the mount's, which differs between the nodes sharing a store.
//! Where `pipe watch` serves the store and has seen no event in the folder since the last
//! fingerprint (the same token, see [`super::fswatch`]), not even that: the last
//! fingerprint is taken as it is, and the folder is walked only when a stage reads it.

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
    /// How many files there are (`files.len()` once walked).
    pub count: usize,
    /// Taken from the last fingerprint on the watcher's word, with no walk: `files` is
    /// empty until [`fingerprint_walk`] lists them.
    pub vouched: bool,
    /// Why `pipe watch`, serving this store, does not vouch for the folder.
    pub watch_refused: Option<String>,
}

/// `statcache/<id>.watch`: the fingerprint taken after the watcher gave `token`.
#[derive(Serialize, Deserialize)]
struct Vouch {
    token: String,
    hash: String,
    files: usize,
}

#[derive(Serialize, Deserialize)]
struct CacheEntry<'a> {
    /// Borrowed from the cache file's bytes when read: no allocation per file.
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    size: u64,
    mtime_ns: i64,
    /// [`RACY`] where the walk that hashed the file could not rule out a write after its
    /// read that left its times as they were.
    ctime_ns: i64,
    ino: u64,
    hash: [u8; 32],
}

/// The first bytes of a stat cache file: one written by an older pipe (no ctime) is not
/// read, and every file is hashed once more.
const CACHE_MAGIC: &[u8] = b"pipe-statcache-v2\0";

/// The ctime recorded for a file whose hash is not proven for its stat (see [`racy`]): no
/// file has it, so the next walk reads the file again.
const RACY: i64 = i64::MIN;

/// Whether a file whose ctime is `ctime_ns` may have been written again after a walk that
/// began at `now_ns` read it, with none of its times moving. A write sets the ctime (and
/// the mtime) to the clock's time, which advances by ticks (Linux: a jiffy, at most 10 ms;
/// 1 s or 2 s where a file system keeps whole seconds, shown by a ctime with no fraction),
/// so only a write in the tick of the file's last change leaves the ctime as it was, and
/// only a ctime within a tick of the walk's start can be that tick. Such a file's hash is
/// not trusted by the next walk (Git's "racy clean" entries). The mtime plays no part: one
/// set in the future (`touch -d`) is no sign of a write to come. A ctime ahead of this
/// clock (a file server's clock ahead of this machine's) is racy until this clock passes
/// it; a server clock behind this one by more than the window is not caught.
pub(crate) fn racy(ctime_ns: i64, now_ns: i64) -> bool {
    const NS: i64 = 1_000_000_000;
    let window = if ctime_ns % NS == 0 { 3 * NS } else { NS / 10 };
    ctime_ns >= now_ns.saturating_sub(window)
}

/// A file's mtime in ns since the epoch (saturated past the year 2262, or before 1678:
/// `touch -d 2300-01-01` is allowed, and the value is only compared).
pub(crate) fn mtime_ns(md: &fs::Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// A file's ctime (status change) in ns since the epoch (saturated as [`mtime_ns`]).
pub(crate) fn ctime_ns(md: &fs::Metadata) -> i64 {
    md.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.ctime_nsec())
}

/// Now, in ns since the epoch (tests may set it).
pub(crate) fn now_ns() -> i64 {
    #[cfg(test)]
    if let Some(t) = tests::FIXED_NOW.with(|c| c.get()) {
        return t;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(t.as_nanos()).unwrap_or(i64::MAX)
}

/// The postcard body of a stat cache file, if it is one this pipe wrote.
fn cache_body(bytes: &[u8]) -> Option<&[u8]> {
    bytes.strip_prefix(CACHE_MAGIC)
}

fn encode_cache(entries: &[CacheEntry]) -> Result<Vec<u8>> {
    let mut out = CACHE_MAGIC.to_vec();
    out.extend_from_slice(&postcard::to_stdvec(entries)?);
    Ok(out)
}

struct Stat {
    rel: String,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    /// A regular file (or a link to one): its content is read and hashed. Anything else
    /// (a FIFO, a device, a socket) is never opened: it counts by its kind alone, and the
    /// stage that would read it as data refuses it by name.
    regular: bool,
}

/// What is below `rel`, in `cmp_paths` order: a tree, flattened once by [`flatten`] (merging
/// each folder's list into its parent's would copy every entry once per level).
/// Folders nested deeper than this are refused (a symlink loop would never end).
const MAX_DEPTH: usize = 64;

fn walk(root: &Path, rel: &str) -> Result<Vec<Found>> {
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
    entries
        .par_iter()
        .map(|(name, e)| -> Result<Found> {
            // Paths are text in the indexes and caches: a name that is not UTF-8 would
            // be written as another name, one no file has.
            let Some(name) = name.to_str() else {
                anyhow::bail!(
                    "{}: a file name that is not UTF-8; rename it (pipe's indexes hold paths as text)",
                    e.path().display()
                );
            };
            let mut r = String::with_capacity(rel.len() + 1 + name.len());
            if !rel.is_empty() {
                r.push_str(rel);
                r.push('/');
            }
            r.push_str(name);
            // `DirEntry::metadata` stats relative to the open directory (no path walk);
            // symlinks are followed with a full `stat`.
            let md = match e.file_type() {
                Ok(t) if t.is_symlink() => fs::metadata(e.path()),
                _ => e.metadata(),
            }
            .with_context(|| format!("cannot stat {}", e.path().display()))?;
            if md.is_dir() {
                let below = walk(root, &r)?;
                Ok(Found::Dir {
                    files: below.iter().map(Found::files).sum(),
                    rel: r,
                    below,
                })
            } else {
                Ok(Found::File(Stat {
                    rel: r,
                    size: md.len(),
                    mtime_ns: mtime_ns(&md),
                    ctime_ns: ctime_ns(&md),
                    ino: md.ino(),
                    regular: md.is_file(),
                }))
            }
        })
        // An error stops the entries not yet started (a symbolic link loop under two names
        // would otherwise take 2^64 folder reads to reach its depth limit).
        .collect()
}

/// One entry of a folder: a file, or a subfolder with what is below it.
enum Found {
    File(Stat),
    Dir {
        rel: String,
        /// Files anywhere below.
        files: usize,
        below: Vec<Found>,
    },
}

impl Found {
    fn files(&self) -> usize {
        match self {
            Found::File(_) => 1,
            Found::Dir { files, .. } => *files,
        }
    }
}

/// The walk's tree as every file in order, and the folders with no file below them (each
/// after the empty folders inside it).
fn flatten(found: Vec<Found>, files: &mut Vec<Stat>, empty: &mut Vec<String>) {
    for f in found {
        match f {
            Found::File(st) => files.push(st),
            Found::Dir {
                rel,
                files: n,
                below,
            } => {
                flatten(below, files, empty);
                if n == 0 {
                    empty.push(rel);
                }
            }
        }
    }
}

/// The stat cache's entries, in its file's order; none when it is missing or unreadable
/// (then every file is read). The format is [`CACHE_MAGIC`], then postcard's
/// `Vec<CacheEntry>`: a length, then the entries, decoded here one by one into a vector
/// sized once.
fn read_cache(bytes: &[u8]) -> Vec<CacheEntry<'_>> {
    let Some(bytes) = cache_body(bytes) else {
        return Vec::new();
    };
    let Ok((n, mut rest)) = postcard::take_from_bytes::<usize>(bytes) else {
        return Vec::new();
    };
    // An entry takes at least 36 bytes (its hash alone 32): a damaged length cannot make
    // this allocate more than the file could hold.
    let mut out = Vec::with_capacity(n.min(bytes.len() / 36));
    for _ in 0..n {
        match postcard::take_from_bytes::<CacheEntry>(rest) {
            Ok((e, r)) => {
                out.push(e);
                rest = r;
            }
            Err(_) => return Vec::new(),
        }
    }
    if rest.is_empty() {
        out
    } else {
        Vec::new()
    }
}

fn cache_file(store: &Store, root: &Path) -> PathBuf {
    let id = blake3::hash(root.to_string_lossy().as_bytes()).to_hex();
    store
        .root()
        .join("statcache")
        .join(format!("{}.bin", &id[..32]))
}

fn vouch_file(store: &Store, root: &Path) -> PathBuf {
    cache_file(store, root).with_extension("watch")
}

/// Forget the fingerprint of `root` that the watcher vouches for: it changed with no event
/// the watcher saw (a write through a memory mapping), so the next run walks it.
pub fn distrust(store: &Store, root: &Path) {
    // Named by the canonical path, as it was written (the manifest may spell it otherwise).
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let _ = fs::remove_file(vouch_file(store, &root));
}

/// Forget what the stat cache of `root` says of `file` (a path below it): the next
/// fingerprint reads it again. For a file whose bytes changed while its stat did not (a
/// write through a memory mapping to a page already dirty, or a file system whose ctime
/// a program can set).
pub fn forget(store: &Store, root: &Path, file: &Path) -> Result<()> {
    let Ok(canonical) = root.canonicalize() else {
        return Ok(());
    };
    // Whatever path the file is found under, the watcher's word on the folder goes.
    distrust(store, &canonical);
    // The file's own name is kept as it is (a link in the folder is cached under its own
    // path, not its target's); only the folders above it are resolved, for a root spelled
    // another way than the walk's.
    let resolved = match (file.parent(), file.file_name()) {
        (Some(dir), Some(name)) => dir.canonicalize().map(|d| d.join(name)).ok(),
        _ => None,
    };
    let Some(rel) = [
        file.strip_prefix(&canonical).ok(),
        file.strip_prefix(root).ok(),
        resolved
            .as_deref()
            .and_then(|f| f.strip_prefix(&canonical).ok()),
    ]
    .into_iter()
    .flatten()
    .next() else {
        return Ok(());
    };
    let rel = rel.to_string_lossy().replace('\\', "/");
    let root = canonical;
    let cpath = cache_file(store, &root);
    let Ok(bytes) = fs::read(&cpath) else {
        return Ok(());
    };
    let mut entries = read_cache(&bytes);
    if entries.is_empty() {
        return Ok(());
    }
    entries.retain(|e| e.path != rel);
    write_atomic(&cpath, &encode_cache(&entries)?)
}

/// The canonical path of dataset folder `root`, which must be a folder.
fn dataset_root(root: &Path) -> Result<PathBuf> {
    let root = root
        .canonicalize()
        .with_context(|| format!("dataset folder {} does not exist", root.display()))?;
    if !root.is_dir() {
        anyhow::bail!("dataset root {} is not a directory", root.display());
    }
    Ok(root)
}

/// Fingerprint `root`: the last fingerprint as it is where the store's watcher has seen
/// nothing happen in the folder since it was taken (then `vouched`, and no file listed);
/// else a walk, reading only files the stat cache does not vouch for (`rehash`: reading
/// every file, as `--force` of the stage that reads it asks).
pub fn fingerprint_tree(store: &Store, root: &Path, rehash: bool) -> Result<TreeFingerprint> {
    let root = dataset_root(root)?;
    // Asked before the walk: an event during it changes the token the next run sees.
    let answer = super::fswatch::ask(store.root(), &root);
    let vouch = vouch_file(store, &root);
    if let (false, super::fswatch::Answer::Token(token)) = (rehash, &answer) {
        let last = fs::read(&vouch)
            .ok()
            .and_then(|b| serde_json::from_slice::<Vouch>(&b).ok());
        if let Some(v) = last.filter(|v| v.token == *token && crate::ids::is_hash(&v.hash)) {
            return Ok(TreeFingerprint {
                root,
                hash: v.hash,
                files: Vec::new(),
                hashed: 0,
                count: v.files,
                vouched: true,
                watch_refused: None,
            });
        }
    }
    let mut fp = fingerprint_walk(store, &root, rehash)?;
    match answer {
        super::fswatch::Answer::Token(token) if !store.is_read_only() => {
            let v = Vouch {
                token,
                hash: fp.hash.clone(),
                files: fp.count,
            };
            // An optimisation, as the stat cache is: failing to write it is no error.
            if let Ok(bytes) = serde_json::to_vec(&v) {
                let _ = write_atomic(&vouch, &bytes);
            }
        }
        super::fswatch::Answer::Refused(why) => fp.watch_refused = Some(why),
        _ => {}
    }
    Ok(fp)
}

/// Fingerprint `root` by walking it, reading only files the stat cache does not vouch
/// for (`rehash`: every file), whatever a watcher says.
pub fn fingerprint_walk(store: &Store, root: &Path, rehash: bool) -> Result<TreeFingerprint> {
    let root = dataset_root(root)?;
    // Before the first stat: what was written since may be racy (see [`racy`]).
    let now = now_ns();
    let found = walk(&root, "")?;
    let mut stats = Vec::with_capacity(found.iter().map(Found::files).sum());
    let mut empty = Vec::new();
    flatten(found, &mut stats, &mut empty);

    let cpath = cache_file(store, &root);
    // The cache is written in walk order, so an unchanged tree matches it entry by entry;
    // anything else falls back to a lookup by path.
    // Read, not mapped: on a store shared over NFS another node may replace the file while
    // it is decoded, which a mapping would answer with SIGBUS.
    let cache_bytes = fs::read(&cpath).ok();
    let hit = |c: &CacheEntry, s: &Stat| {
        (!rehash
            && c.size == s.size
            && c.mtime_ns == s.mtime_ns
            && c.ctime_ns == s.ctime_ns
            && c.ino == s.ino)
            .then_some(c.hash)
    };
    let mut matched: Vec<Option<[u8; 32]>> = Vec::with_capacity(stats.len());
    // An unchanged tree: the cache's entries decoded one by one beside the walk's, never
    // gathered. At the first entry out of place, every entry is looked up by path instead.
    let in_order = match cache_bytes.as_deref().and_then(cache_body) {
        None => stats.is_empty(),
        Some(bytes) => match postcard::take_from_bytes::<usize>(bytes) {
            Ok((n, mut rest)) if n == stats.len() => {
                let mut same = true;
                for s in &stats {
                    match postcard::take_from_bytes::<CacheEntry>(rest) {
                        Ok((c, r)) if c.path == s.rel => {
                            matched.push(hit(&c, s));
                            rest = r;
                        }
                        _ => {
                            same = false;
                            break;
                        }
                    }
                }
                same && rest.is_empty()
            }
            _ => false,
        },
    };
    if !in_order {
        matched.clear();
        let cached = cache_bytes.as_deref().map(read_cache).unwrap_or_default();
        let by_path: std::collections::HashMap<&str, &CacheEntry> =
            cached.iter().map(|c| (c.path.as_ref(), c)).collect();
        matched.extend(
            stats
                .iter()
                .map(|s| by_path.get(s.rel.as_str()).and_then(|c| hit(c, s))),
        );
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
        // An unreadable file stops the reads not yet started.
        .collect::<Result<_>>()?;

    let hashed = hashes.iter().filter(|(_, fresh)| *fresh).count();
    let mut h = blake3::Hasher::new();
    // The same bytes as one `update` per piece, gathered in 64 KiB runs: a few hundred
    // calls, not 360,000, and no buffer the size of the tree's listing.
    const RUN: usize = 64 * 1024;
    let mut run = Vec::with_capacity(RUN + 4096);
    run.extend_from_slice(b"pipe-tree-v1\0");
    for (s, (fh, _)) in stats.iter().zip(&hashes) {
        run.extend_from_slice(s.rel.as_bytes());
        run.push(0);
        run.extend_from_slice(fh);
        if run.len() >= RUN {
            h.update(&run);
            run.clear();
        }
    }
    h.update(&run);
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
            .map(|(s, (hash, fresh))| CacheEntry {
                path: std::borrow::Cow::Borrowed(s.rel.as_str()),
                size: s.size,
                mtime_ns: s.mtime_ns,
                // A hash from the cache was proven by the walk that read the file; one read
                // now, only once its times are older than this walk by a tick.
                ctime_ns: if *fresh && racy(s.ctime_ns, now) {
                    RACY
                } else {
                    s.ctime_ns
                },
                ino: s.ino,
                hash: *hash,
            })
            .collect();
        // The stat cache is an optimisation: failing to write it is not an error.
        if let Ok(bytes) = encode_cache(&entries) {
            let _ = write_atomic(&cpath, &bytes);
        }
    }
    let stats_len = stats.len();
    let files = stats
        .into_iter()
        .zip(hashes)
        .map(|(s, (hash, _))| (s.rel, hash))
        .collect();
    Ok(TreeFingerprint {
        root,
        hash: h.finalize().to_hex().to_string(),
        count: stats_len,
        files,
        hashed,
        vouched: false,
        watch_refused: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::{Duration, SystemTime};

    thread_local! {
        /// What [`now_ns`] answers on this thread, where set.
        pub(super) static FIXED_NOW: Cell<Option<i64>> = const { Cell::new(None) };
    }

    fn ns(t: SystemTime) -> i64 {
        t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64
    }

    fn ctime_ns(p: &Path) -> i64 {
        super::ctime_ns(&fs::metadata(p).unwrap())
    }

    /// The fingerprint through the stat cache, and what reading every file gives.
    fn both(store: &Store, root: &Path) -> (TreeFingerprint, String) {
        let cached = fingerprint_tree(store, root, false).unwrap();
        let fresh = fingerprint_tree(store, root, true).unwrap();
        (cached, fresh.hash)
    }

    fn set_mtime(p: &Path, t: SystemTime) {
        fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn the_stat_cache_sees_every_change_and_reads_only_what_changed() {
        // Every walk an hour on: no file is racy (that case has its own test).
        FIXED_NOW.with(|c| c.set(Some(ns(SystemTime::now() + Duration::from_secs(3600)))));
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let root = tmp.path().join("data");
        for (class, n) in [("a", 30), ("b", 25), ("c", 1)] {
            let dir = root.join("train").join(class);
            fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                fs::write(dir.join(format!("{i:03}.jpg")), format!("{class}-{i:03}")).unwrap();
            }
        }
        let first = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((first.files.len(), first.hashed), (56, 56));
        // Unchanged: nothing read, the same hash, in the walk's order; the cache, found in
        // order, is not written again (a rewrite is a rename: a new inode).
        let cpath = cache_file(&store, &root.canonicalize().unwrap());
        let ino = || fs::metadata(&cpath).unwrap().ino();
        let before = ino();
        let (again, fresh) = both(&store, &root);
        assert_eq!((again.hashed, &again.hash), (0, &first.hash));
        assert_eq!(fresh, first.hash);
        let next = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((next.hashed, &next.hash), (0, &first.hash));
        // (The rehash in `both` wrote it; the run after did not.)
        let written = ino();
        assert_ne!(written, before);
        fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!(ino(), written, "an unchanged tree rewrote its stat cache");
        let mut seen = vec![first.hash.clone()];
        let mut step = |what: &str, read: usize| {
            let (fp, fresh) = both(&store, &root);
            assert_eq!(fp.hash, fresh, "{what}: the cache and a full read disagree");
            assert!(!seen.contains(&fp.hash), "{what}: not seen");
            assert_eq!(fp.hashed, read, "{what}: files read");
            seen.push(fp.hash.clone());
            // And the run after it reads nothing.
            let next = fingerprint_tree(&store, &root, false).unwrap();
            assert_eq!(
                (next.hashed, &next.hash),
                (0, &fp.hash),
                "{what}: the next run"
            );
        };

        // Content changed, the same size, its time set within the same second as before
        // (one nanosecond on).
        let f = root.join("train/a/007.jpg");
        let t = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, b"a-xyz").unwrap();
        set_mtime(&f, t + Duration::from_micros(1));
        assert_eq!(
            fs::metadata(&f).unwrap().modified().unwrap(),
            t + Duration::from_micros(1)
        );
        step("same size, same second", 1);
        // Content changed, the same size, its time put back exactly as it was (`touch -r`,
        // `cp -p` onto the file): only the ctime moved.
        let f = root.join("train/a/008.jpg");
        let t = fs::metadata(&f).unwrap().modified().unwrap();
        fs::write(&f, b"a-zzz").unwrap();
        set_mtime(&f, t);
        assert_eq!(fs::metadata(&f).unwrap().modified().unwrap(), t);
        step("same size, time restored", 1);
        // A file added in the middle of a folder, and one removed.
        fs::write(root.join("train/a/007b.jpg"), b"new").unwrap();
        step("added", 1);
        fs::remove_file(root.join("train/b/003.jpg")).unwrap();
        step("removed", 0);
        // Renamed: as many files as before, one name different (the cache's order breaks).
        fs::rename(root.join("train/b/004.jpg"), root.join("train/b/zzz.jpg")).unwrap();
        step("renamed", 1);
        // An empty folder, then a file in it.
        fs::create_dir_all(root.join("train/d")).unwrap();
        step("empty folder", 0);
        fs::write(root.join("train/d/000.jpg"), b"d").unwrap();
        step("a file in the empty folder", 1);
        // A symbolic link to a file, then its target's content changed.
        std::os::unix::fs::symlink(root.join("train/c/000.jpg"), root.join("train/a/link.jpg"))
            .unwrap();
        step("symlink", 1);
        let target = root.join("train/c/000.jpg");
        let t = fs::metadata(&target).unwrap().modified().unwrap();
        fs::write(&target, b"c-999").unwrap();
        set_mtime(&target, t + Duration::from_micros(1));
        // The target and the link both read again.
        step("a symlink's target changed", 2);
        // The cache file cut short, or with bytes after its end: every file read again,
        // and the same hash as a full read.
        let good = fs::read(&cpath).unwrap();
        for bad in [&good[..good.len() - 5], &[&good[..], b"x"].concat()[..]] {
            write_atomic(&cpath, bad).unwrap();
            let fp = fingerprint_tree(&store, &root, false).unwrap();
            assert_eq!((fp.hashed, &fp.hash), (58, seen.last().unwrap()));
        }
        // A cache an older pipe wrote (no ctime; no header): not read, every file hashed.
        let good = fs::read(&cpath).unwrap();
        write_atomic(&cpath, &good[CACHE_MAGIC.len()..]).unwrap();
        let fp = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((fp.hashed, &fp.hash), (58, seen.last().unwrap()));
        assert_eq!(fs::read(&cpath).unwrap(), good, "the cache is written anew");
    }

    #[test]
    fn a_file_written_in_the_tick_a_walk_read_it_is_read_again_by_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let root = tmp.path().join("data");
        fs::create_dir_all(root.join("a")).unwrap();
        let f = root.join("a/old.jpg");
        fs::write(&f, b"old").unwrap();
        fs::write(root.join("a/new.jpg"), b"new").unwrap();
        let c = ctime_ns(&f);
        // A walk 1 ms after the first write (the second came after it): a write in that
        // tick would leave the times as they are, so neither file's hash is proven.
        FIXED_NOW.with(|t| t.set(Some(c + 1_000_000)));
        let first = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!(first.hashed, 2);
        // Ten seconds on: both read again (their times have not moved), once.
        FIXED_NOW.with(|t| t.set(Some(c + 10_000_000_000)));
        let second = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((second.hashed, &second.hash), (2, &first.hash));
        let third = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((third.hashed, &third.hash), (0, &first.hash));

        // A file's mtime set in the future (`touch -d`): no sign of a write to come, so the
        // walk after the next one reads nothing (were it racy, every walk would read it and
        // write the cache again).
        let ahead = SystemTime::now() + Duration::from_secs(3600);
        set_mtime(&f, ahead);
        let c = ctime_ns(&f);
        FIXED_NOW.with(|t| t.set(Some(c + 10_000_000_000)));
        let read = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!(read.hashed, 1);
        let next = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((next.hashed, &next.hash), (0, &read.hash));

        // The window: a tick (at most 10 ms; 100 ms taken) where the ctime has a fraction;
        // 3 s where it is whole seconds (a file system that keeps seconds, or FAT's 2 s).
        const S: i64 = 1_000_000_000;
        let t = 1_700_000_000 * S + 123_456_789;
        assert!(racy(t, t));
        assert!(racy(t, t + S / 10));
        assert!(!racy(t, t + S / 10 + 1));
        assert!(
            racy(t + 60 * S, t),
            "a ctime ahead of this clock: racy until it passes"
        );
        let whole = 1_700_000_000 * S;
        assert!(racy(whole, whole + 3 * S));
        assert!(!racy(whole, whole + 3 * S + 1));
    }

    #[test]
    fn a_file_forgotten_is_read_again_by_the_next_walk_and_only_it() {
        FIXED_NOW.with(|c| c.set(Some(ns(SystemTime::now() + Duration::from_secs(3600)))));
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let root = tmp.path().join("data");
        fs::create_dir_all(root.join("a")).unwrap();
        for i in 0..5 {
            fs::write(root.join(format!("a/{i}.jpg")), format!("{i}")).unwrap();
        }
        let first = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!(first.hashed, 5);
        // As a stage that found the file's bytes changed under an unchanged stat does.
        forget(&store, &root, &root.join("a/3.jpg")).unwrap();
        let again = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!((again.hashed, &again.hash), (1, &first.hash));
        let next = fingerprint_tree(&store, &root, false).unwrap();
        assert_eq!(next.hashed, 0);
        // A link in the folder, to a file outside it, is forgotten under its own name; so
        // is a file named through a root spelled with a link to it.
        fs::write(tmp.path().join("outside.jpg"), b"o").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside.jpg"), root.join("a/link.jpg"))
            .unwrap();
        std::os::unix::fs::symlink(&root, tmp.path().join("alias")).unwrap();
        assert_eq!(fingerprint_tree(&store, &root, false).unwrap().hashed, 1);
        for (spelled, file) in [
            (&root, root.join("a/link.jpg")),
            (&root, tmp.path().join("alias/a/link.jpg")),
            (&tmp.path().join("alias"), tmp.path().join("alias/a/2.jpg")),
        ] {
            forget(&store, spelled, &file).unwrap();
            let again = fingerprint_tree(&store, &root, false).unwrap();
            assert_eq!(again.hashed, 1, "{}", file.display());
        }
    }

    #[test]
    fn a_symlink_loop_under_two_names_is_refused_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let root = tmp.path().join("data");
        fs::create_dir_all(root.join("a")).unwrap();
        fs::write(root.join("a/f.jpg"), b"f").unwrap();
        // Two ways back up at every level: 2^64 folders to the depth limit, were the walk
        // to go on past its first error.
        std::os::unix::fs::symlink("..", root.join("a/up")).unwrap();
        std::os::unix::fs::symlink("..", root.join("a/again")).unwrap();
        let t = std::time::Instant::now();
        let e = format!("{:#}", fingerprint_tree(&store, &root, false).unwrap_err());
        assert!(e.contains("folders nested more than 64 deep"), "{e}");
        // Not a timing claim: a walk that did not stop would not return at all.
        eprintln!("refused in {:?}", t.elapsed());
    }
}
