//! The content-addressed artifact store (`.pipe/` by default).
//!
//! Layout:
//! - `artifacts/<output-hash>/`: a finished stage's output directory, named by the hash of
//!   its content. Published by one `rename` from the key's scratch folder, so a directory
//!   here is complete.
//! - `keys/<stage-key>.json`: stage key -> output hash (written after the artifact exists).
//! - `state/<pipeline>.json`: what each pipeline last ran, used to explain staleness.
//! - `statcache/`: (path, size, mtime, ctime, inode) -> content hash for external datasets.
//! - `scratch/<stage-key>/`: what a stage keeps across interruptions (training
//!   checkpoints) and the folder it writes its artifact into (`publishing-<pid>/`);
//!   removed when the stage's artifact is published.
//! - `sealed/<output-hash>.json`: each artifact's files as published (size, mtime, ctime, BLAKE3),
//!   checked before the artifact is used (`engine::integrity`).
//! - `damaged/`: artifacts found damaged, moved aside until `pipe gc` deletes them.
//! - `lock`: `flock`ed by the process writing the store; holds its pid and command.
//! - `watch.lock`, `watch.sock`: held and answered on by `pipe watch` (`engine::fswatch`).
//! - `projects.json`: the manifest folders (and their projects) whose pipelines have run
//!   against this store (where `pipe gc` finds the manifests that still use it).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::atomic::{write_atomic, write_json_atomic};
use crate::content::{self, dir_size, HashedFile};
use crate::ids::{ContentHash, Recipe, StageKey};
use crate::manifest::StageKind;

/// A stage key resolved to its output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The stage key.
    pub key: StageKey,
    /// The stage kind.
    pub kind: StageKind,
    /// The stage name that produced it (informative: keys are shared across pipelines).
    pub stage: String,
    /// Content hash of the output directory.
    pub output: ContentHash,
    /// One-line summary of what the stage produced.
    pub summary: String,
    /// Wall time of the run that produced it.
    pub seconds: f64,
}

/// What one stage of a pipeline last resolved to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageRecord {
    /// Stage key.
    pub key: StageKey,
    /// Stage kind.
    pub kind: StageKind,
    /// Implementation version.
    pub version: u32,
    /// Effective configuration.
    pub config: serde_json::Value,
    /// Input stage name -> output hash it read.
    pub inputs: BTreeMap<String, ContentHash>,
    /// Hash of external inputs (dataset tree), if any.
    pub external: Option<String>,
    /// Output hash.
    pub output: ContentHash,
}

/// A folder of manifests that ran against a store, and its project folder (where their
/// relative paths start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// The folder holding the manifests (`<project>/pipelines`).
    pub pipelines: PathBuf,
    /// The project folder.
    pub project: PathBuf,
}

/// The last run of a pipeline, stage by stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PipelineState {
    /// Stage name -> what it last resolved to.
    pub stages: BTreeMap<String, StageRecord>,
}

/// What a lock in `running/` is held for: a stage key being run, or a recipe being
/// submitted.
#[derive(Debug, Clone, Copy)]
pub enum Running<'a> {
    /// A stage key: held while a process runs that stage.
    Key(&'a StageKey),
    /// A recipe: held while its job is looked up, submitted and recorded.
    Recipe(&'a Recipe),
}

/// A handle on a store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    read_only: bool,
}

/// Held while a process writes the store; released on drop (and by the OS on any exit).
pub struct StoreLock {
    _file: fs::File,
    /// This holder's line in `holders/` (who holds the lock), removed on drop.
    note: Option<PathBuf>,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        if let Some(n) = &self.note {
            let _ = fs::remove_file(n);
        }
    }
}

/// How the store's lock is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Alone: `pipe run` in this process (it decides, runs and records as one), `pipe gc`
    /// and `pipe verify` (they delete and move).
    Exclusive,
    /// Beside other such holders, never beside an exclusive one: every process that
    /// publishes without holding it exclusively (an executor's workers and their parent,
    /// Slurm jobs, a sweep's promotion job), so `gc` never runs while one publishes or
    /// reads what it published.
    Shared,
}

impl Store {
    /// Open (creating if needed) a store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        // Absolute, so job scripts, logs and links work from any folder.
        let root = &std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        for sub in [
            "artifacts",
            "keys",
            "state",
            "statcache",
            "scratch",
            "sealed",
            "damaged",
            "running",
            "jobs",
        ] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("cannot create cache directory {}", root.display()))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            read_only: false,
        })
    }

    /// Open a store only to look at it (`pipe status`, `--dry-run`, `verify`): nothing is
    /// created or written, not even the folders of a store that does not exist yet.
    pub fn open_read_only(root: &Path) -> Store {
        Store {
            root: std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf()),
            read_only: true,
        }
    }

    /// Whether this handle must not write.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Take the store's exclusive lock, waiting if another process holds it (`waiting` is
    /// told for whom, first).
    pub fn lock(&self, what: &str, hold: Hold, waiting: &dyn Fn(String)) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let file = acquire(&path, hold == Hold::Shared, || {
            let holders = self.holders();
            waiting(format!(
                "waiting for the cache lock on {} (held by {})",
                self.root.display(),
                if holders.is_empty() {
                    "another pipe process".to_string()
                } else {
                    holders.join("; ")
                }
            ))
        })?;
        // Who holds it, for whoever waits: one file per holder.
        let dir = self.root.join("holders");
        let note = dir.join(format!("{}-{}", std::process::id(), unique_suffix()));
        let note = fs::create_dir_all(&dir)
            .and_then(|()| fs::write(&note, format!("pid {} ({what})", std::process::id())))
            .ok()
            .map(|()| note);
        Ok(StoreLock { _file: file, note })
    }

    /// Who holds the store's lock now, as they said when they took it (holders on this
    /// machine that are gone are left out and their notes removed).
    fn holders(&self) -> Vec<String> {
        let dir = self.root.join("holders");
        let mut out = Vec::new();
        for name in self.names_in("holders", None).unwrap_or_default() {
            let pid = name.split('-').next().unwrap_or("");
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_file(dir.join(&name));
                continue;
            }
            if let Ok(t) = fs::read_to_string(dir.join(&name)) {
                out.push(t.trim().to_string());
            }
        }
        out
    }

    /// The scratch folder of a stage key (created): survives interrupted runs.
    pub fn scratch_dir(&self, key: &StageKey) -> Result<PathBuf> {
        let p = self.scratch_path(key);
        fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// The scratch folder of a stage key (not created).
    pub fn scratch_path(&self, key: &StageKey) -> PathBuf {
        self.root.join("scratch").join(key.as_str())
    }

    /// Remove the scratch folder named `name` (a key's, or one found on disk).
    pub fn remove_scratch(&self, name: &str) -> Result<()> {
        let p = self.root.join("scratch").join(name);
        if p.exists() {
            fs::remove_dir_all(&p)?;
        }
        Ok(())
    }

    /// Every scratch folder's key.
    pub fn all_scratch(&self) -> Result<Vec<String>> {
        self.names_in("scratch", None)
    }

    /// The names of the entries of store folder `sub` (none if it is missing); with
    /// `ext`, only those ending `.<ext>`, without it.
    fn names_in(&self, sub: &str, ext: Option<&str>) -> Result<Vec<String>> {
        let dir = self.root.join(sub);
        let mut out = Vec::new();
        if !dir.is_dir() {
            return Ok(out);
        }
        for e in fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            match ext {
                None => out.push(name),
                Some(x) => {
                    if let Some(stem) = name.strip_suffix(x).and_then(|n| n.strip_suffix('.')) {
                        out.push(stem.to_string());
                    }
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Directory of a published artifact.
    pub fn artifact_dir(&self, output: &ContentHash) -> PathBuf {
        self.root.join("artifacts").join(output.as_str())
    }

    /// Hash a finished temporary directory and publish it by rename; returns its hash,
    /// each content file as hashed (for its seal), and whether the artifact was there
    /// already (a byte-identical artifact already present is kept and the new one
    /// dropped, unless `damaged` says it is not what its name says: it is then moved
    /// aside and the new one put in its place). `records`: the top-level files its stage
    /// kind declares as records.
    pub fn publish(
        &self,
        tmp: &Path,
        records: &[&str],
        damaged: &dyn Fn(&ContentHash) -> Result<bool>,
    ) -> Result<(ContentHash, Vec<HashedFile>, bool)> {
        let (hash, files) = content::hash_dir(tmp, records)?;
        let hash = ContentHash::new(hash);
        let dest = self.artifact_dir(&hash);
        let mut existed = false;
        // Checked and set aside under the seals' lock: two processes publishing these
        // bytes at once never set aside each other's fresh copy (the second finds the
        // first's sound).
        let _seals = match dest.is_dir() {
            true => Some(self.lock_seals()?),
            false => None,
        };
        if _seals.is_some() && dest.is_dir() && damaged(&hash)? {
            self.quarantine(&hash)?;
        }
        if dest.is_dir() {
            fs::remove_dir_all(tmp)?;
            existed = true;
            return Ok((hash, files, existed));
        }
        // On disk before it takes its name: the seal that follows vouches for these bytes.
        content::sync_tree(tmp)?;
        if let Err(e) = fs::rename(tmp, &dest) {
            if dest.is_dir() {
                // Another process published the same content first: same bytes, keep theirs.
                fs::remove_dir_all(tmp)?;
                existed = true;
            } else {
                return Err(e).with_context(|| {
                    format!("cannot publish {} as {}", tmp.display(), dest.display())
                });
            }
        } else {
            // The new name is on disk before the seal names it.
            content::sync_dir(dest.parent().unwrap_or(Path::new(".")))?;
        }
        Ok((hash, files, existed))
    }

    /// The lock seals are changed under (`sealed/.lock`).
    fn lock_seals(&self) -> Result<fs::File> {
        super::integrity::lock_seals(&self.root.join("sealed"))
    }

    /// Where an artifact's seal lives (`engine::integrity` writes and reads it).
    pub fn seal_path(&self, output: &ContentHash) -> PathBuf {
        self.root.join("sealed").join(format!("{output}.json"))
    }

    /// Move a damaged artifact aside (into `damaged/`), so that it counts as missing.
    pub fn quarantine(&self, output: &ContentHash) -> Result<()> {
        let dir = self.artifact_dir(output);
        if dir.is_dir() {
            content::set_read_only(&dir, false)?;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let to = self.root.join("damaged").join(format!("{output}-{nanos}"));
            fs::rename(&dir, &to)
                .with_context(|| format!("cannot move {} aside", dir.display()))?;
        }
        let seal = self.seal_path(output);
        if seal.exists() {
            fs::remove_file(seal)?;
        }
        Ok(())
    }

    /// The artifacts moved aside as damaged: (folder name, bytes).
    pub fn damaged_dirs(&self) -> Result<Vec<(String, u64)>> {
        let dir = self.root.join("damaged");
        let names = self.names_in("damaged", None)?;
        Ok(names
            .into_iter()
            .map(|n| {
                let bytes = dir_size(&dir.join(&n));
                (n, bytes)
            })
            .collect())
    }

    /// Delete the artifacts moved aside as damaged; returns the bytes freed.
    pub fn remove_damaged(&self) -> Result<u64> {
        let mut bytes = 0;
        let dir = self.root.join("damaged");
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                bytes += dir_size(&p);
                content::set_read_only(&p, false)?;
                fs::remove_dir_all(&p)?;
            }
        }
        Ok(bytes)
    }

    /// Look up a key; `None` if unknown or its artifact is gone.
    pub fn lookup(&self, key: &StageKey) -> Option<KeyRecord> {
        let rec: KeyRecord = read_json(&self.key_path(key.as_str())).ok()??;
        self.artifact_dir(&rec.output).is_dir().then_some(rec)
    }

    /// Record a key -> output mapping (atomically).
    pub fn record(&self, rec: &KeyRecord) -> Result<()> {
        write_json_atomic(&self.key_path(rec.key.as_str()), rec)
    }

    /// Where a key's record lives (`keys/<key>.json`); `name` is a key, or a record's
    /// file name found on disk.
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.root.join("keys").join(format!("{name}.json"))
    }

    /// Take the lock of one stage key, held while a process runs that stage: waits (and
    /// says so) while another process runs it. Cluster jobs and local runs hold it, so a
    /// key never runs twice at once; the store-wide lock is not needed for that.
    ///
    /// A recipe's lock (`Running::Recipe`) is held while its job is looked up, submitted
    /// and recorded, so two submitters never submit it twice.
    pub fn lock_running(
        &self,
        what: Running<'_>,
        stage: &str,
        waiting: &dyn Fn(String),
    ) -> Result<StoreLock> {
        let name = match what {
            Running::Key(k) => k.to_string(),
            Running::Recipe(r) => format!("recipe-{r}"),
        };
        let path = self.root.join("running").join(format!("{name}.lock"));
        let file = acquire(&path, false, || {
            waiting(format!(
                "{stage}: another process is running this stage; waiting for it"
            ))
        })?;
        Ok(StoreLock {
            _file: file,
            note: None,
        })
    }

    /// Whether some process holds `key`'s lock (is running that stage) now.
    pub fn key_is_running(&self, key: &StageKey) -> bool {
        let path = self.root.join("running").join(format!("{key}.lock"));
        // Read-only: flock needs no write access, and a reader of the store writes nothing.
        // A shared probe: it fails only against the runner's exclusive lock, never against
        // another probe (the dashboard's and `pipe status`'s at the same moment).
        lock_is_held(&path)
    }

    /// A fresh directory for a stage to write its artifact into, inside the key's scratch
    /// folder: only the holder of the key's lock uses it, so no other process's clean-up
    /// touches it. Left-overs of killed runs are removed first.
    pub fn new_out_dir(&self, key: &StageKey) -> Result<PathBuf> {
        let scratch = self.scratch_dir(key)?;
        for e in fs::read_dir(&scratch)? {
            let p = e?.path();
            if p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("publishing-"))
            {
                fs::remove_dir_all(&p)?;
            }
        }
        let p = scratch.join(format!("publishing-{}", std::process::id()));
        fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Change a pipeline's recorded state under its own lock (read, change, write), so
    /// concurrent jobs of one pipeline each add their stage.
    pub fn update_state(
        &self,
        pipeline: &str,
        change: impl FnOnce(&mut PipelineState),
    ) -> Result<()> {
        let lock = self
            .root
            .join("state")
            .join(format!("{}.lock", state_stem(pipeline)));
        let _held = acquire(&lock, false, || {})?;
        let mut st = self.load_state(pipeline);
        change(&mut st);
        self.save_state(pipeline, &st)
    }

    /// Remember that manifests in folder `pipelines` (of the project in folder `project`)
    /// run against this store, so `pipe gc` finds them from anywhere. Written once each.
    pub fn note_project(&self, pipelines: &Path, project: &Path) -> Result<()> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let entry = ProjectRecord {
            pipelines: abs(pipelines),
            project: abs(project),
        };
        if self.projects().contains(&entry) {
            return Ok(());
        }
        let lock = self.root.join("projects.lock");
        let _held = acquire(&lock, false, || {})?;
        let mut all = self.projects();
        if !all.contains(&entry) {
            all.push(entry);
            all.sort_by(|a, b| a.pipelines.cmp(&b.pipelines));
            write_json_atomic(&self.root.join("projects.json"), &all)?;
        }
        Ok(())
    }

    /// The manifest folders recorded by [`Store::note_project`].
    pub fn projects(&self) -> Vec<ProjectRecord> {
        read_json(&self.root.join("projects.json"))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// The names of the pipelines with a recorded state, as [`state_stem`] makes them.
    pub fn state_names(&self) -> Result<Vec<String>> {
        self.names_in("state", Some("json"))
    }

    /// Remove a pipeline's recorded state.
    pub fn remove_state(&self, pipeline: &str) -> Result<()> {
        let p = self.state_path(pipeline);
        if p.exists() {
            fs::remove_file(p)?;
        }
        Ok(())
    }

    /// The folder of cluster job records and logs.
    pub fn jobs_dir(&self) -> PathBuf {
        self.root.join("jobs")
    }

    /// The last recorded state of a pipeline.
    pub fn load_state(&self, pipeline: &str) -> PipelineState {
        read_json(&self.state_path(pipeline))
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Save a pipeline's state (atomically).
    pub fn save_state(&self, pipeline: &str, st: &PipelineState) -> Result<()> {
        write_json_atomic(&self.state_path(pipeline), st)
    }

    fn state_path(&self, pipeline: &str) -> PathBuf {
        self.root
            .join("state")
            .join(format!("{}.json", state_stem(pipeline)))
    }

    /// Every key record in the store that reads (see [`Store::all_key_names`] for all).
    pub fn all_keys(&self) -> Result<Vec<KeyRecord>> {
        let mut out = Vec::new();
        for key in self.all_key_names()? {
            if let Ok(Some(r)) = read_json::<KeyRecord>(&self.key_path(&key)) {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The key of every key record file, readable or not.
    pub fn all_key_names(&self) -> Result<Vec<String>> {
        self.names_in("keys", Some("json"))
    }

    /// Every artifact hash in the store (folders whose names are no hash are not
    /// artifacts).
    pub fn all_artifacts(&self) -> Result<Vec<ContentHash>> {
        let names = self.names_in("artifacts", None)?;
        Ok(names.iter().filter_map(|n| ContentHash::parse(n)).collect())
    }

    /// Remove the key record named `name` (a key, or a record's file name found on disk).
    pub fn remove_key(&self, name: &str) -> Result<()> {
        let p = self.key_path(name);
        if p.exists() {
            fs::remove_file(p)?;
        }
        Ok(())
    }

    /// Remove an artifact; returns the bytes freed.
    pub fn remove_artifact(&self, output: &ContentHash) -> Result<u64> {
        let p = self.artifact_dir(output);
        let bytes = dir_size(&p);
        if p.is_dir() {
            content::set_read_only(&p, false)?;
            fs::remove_dir_all(&p)?;
        }
        let seal = self.seal_path(output);
        if seal.exists() {
            fs::remove_file(seal)?;
        }
        Ok(bytes)
    }
}

/// Whether some process holds the lock on `path`: a missing file, nobody. One that cannot
/// be opened or probed (out of file handles, no read permission, a file system without
/// locks) counts as held: a reader that cannot tell must not call a run interrupted, nor
/// `pipe gc` remove what it may be writing.
pub(crate) fn lock_is_held(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: a FIFO put in a lock file's place must not hang a reader.
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
    match opened {
        Ok(f) => !matches!(f.try_lock_shared(), Ok(())),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
        ),
    }
}

/// Open (creating it) the lock file at `path` and take its `flock`, exclusive or
/// `shared`; if another process holds it in a way that excludes this one, call `waiting`
/// first, then wait. The lock is released when the file is dropped, and by the OS on any
/// exit.
fn acquire(path: &Path, shared: bool, waiting: impl FnOnce()) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let tried = match shared {
        true => file.try_lock_shared(),
        false => file.try_lock(),
    };
    match tried {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            waiting();
            match shared {
                true => file.lock_shared(),
                false => file.lock(),
            }
            .with_context(|| format!("waiting for the lock {}", path.display()))?;
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    Ok(file)
}

/// Nanoseconds of the clock, to tell apart files one process makes.
fn unique_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The most bytes a JSON file of the store (a key record, a manifest, a run record) is
/// read to: anything larger is no file pipe wrote.
pub(crate) const JSON_CAP: u64 = 256 << 20;

/// A small file's bytes (JSON, a list of lines), opened without waiting (a FIFO put in
/// its place reads as empty at once) and refused when it is no regular file (a link to a
/// device) or larger than `cap` bytes.
pub(crate) fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let too_big = |n: u64| std::io::Error::other(format!("{n} bytes: larger than {cap}"));
    if md.len() > cap {
        return Err(too_big(md.len()));
    }
    let mut buf = Vec::with_capacity(md.len() as usize + 1);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// Read a JSON file; `Ok(None)` if it does not exist.
pub fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<Option<T>> {
    match read_capped(p, JSON_CAP) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("corrupt {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", p.display())),
    }
}

/// The file name (without extension) of a pipeline's state: its name, unless the name is
/// too long for a file name (a sweep point's id grows with its values) or could leave the
/// folder; then its first 100 bytes and a hash of the whole, so the stem stays unique.
pub fn state_stem(pipeline: &str) -> String {
    let plain = pipeline.len() <= 200
        && !pipeline.is_empty()
        && !pipeline.starts_with('.')
        && !pipeline.contains(['/', '\\', '\0']);
    if plain {
        return pipeline.to_string();
    }
    let mut cut = 100.min(pipeline.len());
    while !pipeline.is_char_boundary(cut) {
        cut -= 1;
    }
    let head: String = pipeline[..cut]
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\' | '\0') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let head = head.trim_start_matches('.');
    format!(
        "{head}~{}",
        &blake3::hash(pipeline.as_bytes()).to_hex()[..16]
    )
}

#[cfg(test)]
mod tests {
    use super::{state_stem, Store};
    use crate::content::tests::take_synced;
    use std::fs;

    #[test]
    fn a_lock_that_cannot_be_probed_counts_as_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("run.live");
        assert!(!super::lock_is_held(&p), "no file: nobody");
        assert!(
            !super::lock_is_held(&dir.path().join("run.live/x")),
            "nothing under it"
        );
        fs::write(&p, b"").unwrap();
        assert!(!super::lock_is_held(&p), "a file nobody locks");
        let holder = fs::File::open(&p).unwrap();
        holder.lock().unwrap();
        assert!(super::lock_is_held(&p), "locked by another open file");
        drop(holder);
        assert!(!super::lock_is_held(&p), "let go");
        // Something there that cannot be opened (a socket: ENXIO) is not taken for an
        // ended run.
        let sock = dir.path().join("sock.live");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(super::lock_is_held(&sock));
        // A FIFO in a lock file's place: an answer, not a reader hung on it for good.
        let fifo = dir.path().join("fifo.live");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; no memory is kept.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(super::lock_is_held(&fifo)).unwrap());
        let answer = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(answer, Ok(false), "nobody locks it");
    }

    #[test]
    fn an_artifact_is_on_disk_before_it_is_published_and_its_seal_before_it_is_trusted() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::open(root.path()).unwrap();
        let tmp = root.path().join("scratch-one");
        fs::create_dir_all(tmp.join("sub/deeper")).unwrap();
        fs::write(tmp.join("a.bin"), b"alpha").unwrap();
        fs::write(tmp.join("sub/deeper/b.bin"), b"beta").unwrap();
        fs::write(tmp.join("timings.json"), b"{}").unwrap();
        take_synced(root.path());
        let (hash, files, existed) = store
            .publish(&tmp, &["timings.json"], &|_| Ok(false))
            .unwrap();
        assert!(!existed);
        let synced = take_synced(root.path());
        let at = |p: &std::path::Path| {
            synced
                .iter()
                .position(|s| s == p)
                .unwrap_or_else(|| panic!("{} was not synced: {synced:?}", p.display()))
        };
        let artifacts = root.path().join("artifacts");
        // Every file (records too: they are published with it) and folder, then the
        // folder the new name is in, last.
        let published = at(&artifacts);
        assert_eq!(published, synced.len() - 1, "{synced:?}");
        for p in [
            "a.bin",
            "sub/deeper/b.bin",
            "timings.json",
            "sub/deeper",
            "sub",
            "",
        ] {
            assert!(at(&tmp.join(p).components().collect::<std::path::PathBuf>()) < published);
        }
        // A folder is synced after what it holds.
        assert!(at(&tmp.join("sub/deeper/b.bin")) < at(&tmp.join("sub/deeper")));
        assert!(at(&tmp.join("sub")) < at(&tmp));
        // The seal: the folder its name is in is synced after it is written.
        let seal = store.seal_path(&hash);
        crate::engine::integrity::seal(&store.artifact_dir(&hash), &seal, &files, &[], true)
            .unwrap();
        assert_eq!(
            take_synced(root.path()),
            vec![seal.parent().unwrap().to_path_buf()]
        );
        // The same bytes again: nothing new to make durable.
        let again = root.path().join("scratch-two");
        fs::create_dir_all(&again).unwrap();
        fs::write(again.join("a.bin"), b"alpha").unwrap();
        fs::create_dir_all(again.join("sub/deeper")).unwrap();
        fs::write(again.join("sub/deeper/b.bin"), b"beta").unwrap();
        let (same, _, existed) = store
            .publish(&again, &["timings.json"], &|_| Ok(false))
            .unwrap();
        assert!(existed && same == hash && !again.exists());
        assert_eq!(take_synced(root.path()), Vec::<std::path::PathBuf>::new());
    }

    #[test]
    fn a_state_file_name_stays_in_its_folder_and_under_the_length_limit() {
        assert_eq!(state_stem("exp3"), "exp3");
        assert_eq!(state_stem("mini_lr@lr=5e-3"), "mini_lr@lr=5e-3");
        let long = format!("sweep@description={}", "a".repeat(300));
        let stem = state_stem(&long);
        assert!(
            stem.len() < 130 && stem.starts_with("sweep@description=aaa"),
            "{stem}"
        );
        assert_ne!(stem, state_stem(&format!("{long}b")), "stems stay unique");
        assert_eq!(state_stem(&stem), stem, "a stem is its own stem");
        for bad in ["../../evil", "a/b", ".hidden"] {
            let s = state_stem(bad);
            assert!(!s.contains('/') && !s.starts_with('.'), "{bad} -> {s}");
        }
        // Multi-byte characters are cut on a character boundary.
        assert!(state_stem(&"é".repeat(150)).starts_with("éé"));
    }
}
