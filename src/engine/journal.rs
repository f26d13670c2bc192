//! The run journal: one immutable record per run of a pipeline or sweep point, under the
//! store's `runs/` folder.
//!
//! ```text
//! runs/<id>.json           the record (written when the run starts, completed when it ends)
//! runs/<id>.live           locked (flock) by the run's process while it runs, removed
//!                          once its record is complete (a Slurm run's: handed to its jobs)
//! runs/<id>.notes.jsonl    tags and notes added later (`pipe tag`, `pipe note`)
//! runs/sources/<h>.json    the manifest texts and overrides a run was loaded from (shared)
//! runs/last/<pipeline>     the id of the pipeline's latest run (for "what changed")
//! runs/jobs/<job>.json     what a Slurm job made, for the records that wait on it
//! ```
//!
//! A record is created with a hard link (never over another's), rewritten only by its
//! own process and always atomically. A record still `running` whose lock nobody holds was
//! left by a killed process: readers show it as interrupted. A record that does not parse
//! is skipped with a warning that names it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::store::{read_capped, read_json, state_stem, Store, JSON_CAP};
use crate::atomic::{write_atomic, write_json_atomic};
use crate::manifest::{ManifestSources, Pipeline, StageKind};
use crate::outcome::record::{
    Annotation, GitInfo, HostInfo, RunRecord, RunState, StageEntry, RECORD_FORMAT,
};
use crate::outcome::{JobState, StageOutcome, StageState};
use crate::stages;

/// The journal of one store.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

/// The records read, and a warning for each file that could not be.
#[derive(Debug, Default)]
pub struct Listing {
    /// Newest first.
    pub runs: Vec<RunRecord>,
    /// `runs/x.json: damaged record skipped (...)`.
    pub warnings: Vec<String>,
    /// The ids of those records (their pipeline is not known; their id says when they
    /// started).
    pub damaged: Vec<String>,
}

/// Whether `PIPE_NO_JOURNAL=1` turns the journal off (for benchmarks that measure what
/// it costs: `pipe bench journal`).
pub fn disabled() -> bool {
    std::env::var_os("PIPE_NO_JOURNAL").is_some_and(|v| v == "1")
}

/// Whether `s` looks like a run id: `20261206-041500-3fa9`.
pub fn is_run_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

pub use crate::outcome::record::{now_rfc3339, unix_nanos_of, unix_of};

impl Journal {
    /// The journal of `store`.
    pub fn of(store: &Store) -> Journal {
        Journal {
            dir: store.root().join("runs"),
        }
    }

    /// The journal folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn live_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.live"))
    }

    fn notes_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.notes.jsonl"))
    }

    fn job_path(&self, job: &str) -> PathBuf {
        self.dir.join("jobs").join(format!("{job}.json"))
    }

    /// What a Slurm job said of its stage when it ended (or `running`), if it said.
    pub fn job_entry(&self, job: &str) -> Option<StageEntry> {
        read_json::<StageEntry>(&self.job_path(job)).ok().flatten()
    }

    /// Start a record for a run of `p` by `executor` (`in-process`, `local`, `slurm`):
    /// written at once, with state `running`, and held (locked) by this process until
    /// [`Recording::finish`] or its exit.
    pub fn begin(&self, p: &Pipeline, executor: &str) -> Result<Recording> {
        let t0 = Instant::now();
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let project = p.project_dir.clone();
        let git = std::thread::spawn(move || git_info(&project));
        let sources = self.keep_sources(&p.sources)?;
        let (config, _) = super::query::flat_config(p)?;
        let (previous, changes) = self.changes_since_last(&p.name, &config, &p.sources.sets);
        let (sweep, point) = match p.name.split_once('@') {
            Some((s, pt)) => (Some(s.to_string()), Some(pt.to_string())),
            None => (None, None),
        };
        let (device, backend) = devices_of(p);
        let mut record = RunRecord {
            format: RECORD_FORMAT,
            id: String::new(),
            pipeline: p.name.clone(),
            sweep,
            point,
            manifest: p.file.display().to_string(),
            project: p.project_dir.display().to_string(),
            sources,
            sets: p.sources.sets.clone(),
            config_json: crate::outcome::record::config_json(&config),
            stages: p
                .topo_order()
                .iter()
                .map(|n| StageEntry {
                    name: n.clone(),
                    kind: p.stages[n].config.kind().to_string(),
                    key: None,
                    output: None,
                    state: "not-run".into(),
                    seconds: 0.0,
                    summary: String::new(),
                    job: None,
                })
                .collect(),
            metrics: BTreeMap::new(),
            previous,
            changes,
            git: None,
            host: host_info(),
            device,
            backend,
            version: env!("CARGO_PKG_VERSION").to_string(),
            // A remote's URL may carry a password (`https://user:pw@host`): never kept.
            command: std::env::args()
                .map(|a| super::remote::redact_arg(&a))
                .collect(),
            executor: executor.to_string(),
            started: now_rfc3339(),
            ended: None,
            seconds: None,
            state: RunState::Running,
            error: None,
            remark: None,
            pid: std::process::id(),
            tags: Vec::new(),
            notes: Vec::new(),
            collected: Vec::new(),
            partial: false,
        };
        // A fresh id whose record nobody else has: the live lock first (so a reader never
        // sees a running record that nobody holds), then the record by a hard link, which
        // fails rather than replace another run's.
        for _ in 0..64 {
            let id = new_id();
            let live_path = self.live_path(&id);
            let live = match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&live_path)
            {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", live_path.display()))
                }
            };
            live.lock()
                .with_context(|| format!("cannot lock {}", live_path.display()))?;
            record.id = id.clone();
            let path = self.record_path(&id);
            let tmp = self.dir.join(format!(".{id}.{}.new", std::process::id()));
            fs::write(&tmp, serde_json::to_vec(&record)?)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            let linked = fs::hard_link(&tmp, &path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    // A hint (what changed since): no fsync; a lost one only loses that.
                    let last = self.dir.join("last");
                    let _ = fs::create_dir_all(&last).and_then(|()| {
                        // Random as well: processes in two containers sharing the
                        // store may have one pid.
                        let tmp = last.join(format!(
                            ".{}.{:016x}.tmp",
                            std::process::id(),
                            rand::random::<u64>()
                        ));
                        fs::write(&tmp, id.as_bytes())
                            .and_then(|()| fs::rename(&tmp, self.last_path(&p.name)))
                    });
                    return Ok(Recording {
                        journal: self.clone(),
                        record,
                        live: Some(live),
                        git: Some(git),
                        t0,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&live_path);
                    continue;
                }
                Err(e) => {
                    let _ = fs::remove_file(&live_path);
                    return Err(e).with_context(|| format!("cannot write {}", path.display()));
                }
            }
        }
        bail!("could not find a free run id in {}", self.dir.display())
    }

    /// Keep the texts a run was loaded from (once per distinct content); their hash.
    fn keep_sources(&self, src: &ManifestSources) -> Result<String> {
        let bytes = serde_json::to_vec(src)?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        let path = self.dir.join("sources").join(format!("{hash}.json"));
        if !path.exists() {
            write_atomic(&path, &bytes)?;
        }
        Ok(hash)
    }

    /// The texts and overrides a recorded run was loaded from.
    pub fn sources(&self, rec: &RunRecord) -> Result<ManifestSources> {
        let path = self
            .dir
            .join("sources")
            .join(format!("{}.json", rec.sources));
        let bytes = read_capped(&path, JSON_CAP).with_context(|| {
            format!(
                "run {}: its manifest texts ({}) cannot be read",
                rec.id,
                path.display()
            )
        })?;
        if blake3::hash(&bytes).to_hex().as_str() != rec.sources {
            bail!(
                "run {}: its manifest texts ({}) are damaged (their hash differs)",
                rec.id,
                path.display()
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("run {}: {} does not parse", rec.id, path.display()))
    }

    /// Whether the latest recorded run of `pipeline` is running now (`None`: none is
    /// recorded). The dashboard's live pages close their stream when it ends.
    pub fn last_is_running(&self, pipeline: &str) -> Option<bool> {
        let rec = self.get(&self.last_id(pipeline)?).ok()?;
        Some(rec.state == RunState::Running)
    }

    /// The latest record of `pipeline` when it is a Slurm run whose stages await a
    /// halving decision (`awaiting`): the one a promotion job carries on.
    ///
    /// In a promotion job (`SLURM_JOB_ID` set), the record whose stages await this very
    /// job: the latest run of the point (a hint) is tried first, and when it is another
    /// (the point run again since, here or in another submission), every record of the
    /// point is looked at.
    pub fn awaiting_decision(&self, pipeline: &str) -> Option<String> {
        let me = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty());
        self.awaiting_job(pipeline, me)
    }

    /// [`Journal::awaiting_decision`] in the job `me`.
    fn awaiting_job(&self, pipeline: &str, me: Option<String>) -> Option<String> {
        let awaits = |id: &str| -> bool {
            let Ok(Some(rec)) = read_json::<RunRecord>(&self.record_path(id)) else {
                return false;
            };
            rec.state == RunState::Running
                && rec.executor == "slurm"
                && rec.pipeline == pipeline
                && rec.stages.iter().any(|s| {
                    s.state == AWAITING && (me.is_none() || s.job.as_deref() == me.as_deref())
                })
        };
        if let Some(id) = self.last_id(pipeline).filter(|id| awaits(id)) {
            return Some(id);
        }
        me.as_ref()?;
        let mut ids: Vec<String> = fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                is_run_id(id).then(|| id.to_string())
            })
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        ids.into_iter().find(|id| awaits(id))
    }

    /// A record from elsewhere (`pipe pull`: a teammate's run), as its bytes: written
    /// under its id unless one is there, with its head when it is complete.
    pub fn add_record(&self, rec: &RunRecord, bytes: &[u8]) -> Result<()> {
        let path = self.record_path(&rec.id);
        if path.exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)?;
        write_atomic(&path, bytes)?;
        if rec.state != RunState::Running {
            self.add_head(rec)?;
        }
        Ok(())
    }

    /// Manifest texts from elsewhere (`runs/sources/<hash>.json`), kept when they match
    /// their hash.
    pub fn add_sources(&self, hash: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join("sources").join(format!("{hash}.json"));
        if path.exists() {
            return Ok(());
        }
        if blake3::hash(bytes).to_hex().as_str() != hash {
            bail!("the manifest texts {hash} do not match their hash");
        }
        fs::create_dir_all(self.dir.join("sources"))?;
        write_atomic(&path, bytes)
    }

    /// Change a detached (Slurm) record as it stands on disk, and write it back
    /// atomically: what a promotion job does when it decides for the record's point.
    pub fn amend(&self, id: &str, change: impl FnOnce(&mut RunRecord)) -> Result<()> {
        let path = self.record_path(id);
        let Some(mut rec) = read_json::<RunRecord>(&path)? else {
            bail!("no run `{id}` in {}", self.dir.display());
        };
        change(&mut rec);
        write_atomic(&path, &serde_json::to_vec(&rec)?)
    }

    /// Where the id of `pipeline`'s latest run is kept (a hint, written without fsync).
    fn last_path(&self, pipeline: &str) -> PathBuf {
        self.dir.join("last").join(state_stem(pipeline))
    }

    /// The id of `pipeline`'s latest run, if one is recorded.
    fn last_id(&self, pipeline: &str) -> Option<String> {
        read_capped(&self.last_path(pipeline), 4096)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| is_run_id(s))
    }

    /// The latest run of `pipeline` and what changed since: keys whose value differs,
    /// and overrides.
    fn changes_since_last(
        &self,
        pipeline: &str,
        config: &BTreeMap<String, String>,
        sets: &[String],
    ) -> (Option<String>, Vec<String>) {
        let Some(id) = self.last_id(pipeline) else {
            return (None, Vec::new());
        };
        let Ok(Some(prev)) = read_json::<RunRecord>(&self.record_path(&id)) else {
            return (None, Vec::new());
        };
        let mut changes = config_changes(&prev.config(), config);
        if changes.is_empty() && prev.sets != sets {
            changes.push(format!(
                "--set [{}] -> [{}]",
                prev.sets.join(" "),
                sets.join(" ")
            ));
        }
        (Some(id), changes)
    }

    /// Every record, newest first, each as it stands now (a running one whose process
    /// died: interrupted; a Slurm run: assembled from its jobs), with tags and notes.
    /// Records that do not read are skipped with a warning.
    pub fn list(&self) -> Listing {
        self.list_from(false)
    }

    /// [`Journal::list`] for display (`pipe runs`' table, the dashboard's lists): each
    /// completed run as its head in `runs/heads.jsonl` when its record file is as it was
    /// then (size and time): what a list shows — id, pipeline, start, time, state,
    /// changes, headline metrics, artifacts — and nothing else ([`RunRecord::partial`]);
    /// every other run (running, interrupted, a Slurm run, a changed file, one without a
    /// head) read whole.
    pub fn list_heads(&self) -> Listing {
        self.list_from(true)
    }

    fn list_from(&self, heads: bool) -> Listing {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Listing::default();
        };
        let mut ids = Vec::new();
        let mut annotated = std::collections::HashSet::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json").filter(|i| is_run_id(i)) {
                ids.push(id.to_string());
            } else if let Some(id) = name.strip_suffix(".notes.jsonl") {
                annotated.insert(id.to_string());
            }
        }
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let mut index = match heads {
            true => self.read_heads(),
            false => std::collections::HashMap::new(),
        };
        let from_head: Vec<Option<Head>> = ids.iter().map(|id| index.remove(id)).collect();
        // Each record's size and time, looked up by name in the open folder (no path walk
        // per record: ten thousand of them).
        let folder = fs::File::open(&self.dir).ok();
        let read: Vec<Result<RunRecord, (String, String)>> = ids
            .par_iter()
            .zip(from_head)
            .map(|(id, head)| {
                let annotated = annotated.contains(id.as_str());
                if let Some(h) = head {
                    let stamp = match &folder {
                        Some(f) => stamp_in(f, &format!("{id}.json")),
                        None => file_stamp(&self.record_path(id)),
                    };
                    // A head from before inodes were kept (0) goes by size and time.
                    let same = stamp.is_some_and(|(size, ns, ino)| {
                        (size, ns) == (h.size, h.mtime_ns) && (h.ino == 0 || h.ino == ino)
                    });
                    if same {
                        let mut rec = h.into_record();
                        if annotated {
                            self.add_annotations(&mut rec);
                        }
                        return Ok(rec);
                    }
                }
                self.read_record(id, annotated).map_err(|w| (id.clone(), w))
            })
            .collect();
        let mut out = Listing::default();
        for r in read {
            match r {
                Ok(rec) => out.runs.push(rec),
                Err((id, w)) => {
                    out.damaged.push(id);
                    out.warnings.push(w);
                }
            }
        }
        // Newest first by start time (ids sort by the second; runs in one second by time).
        out.runs.sort_by_cached_key(|r| {
            std::cmp::Reverse((unix_nanos_of(&r.started).unwrap_or(0), r.id.clone()))
        });
        out
    }

    fn heads_path(&self) -> PathBuf {
        self.dir.join("heads.jsonl")
    }

    /// The heads of completed runs (`runs/heads.jsonl`, one line each). A cache only: the
    /// record files are the truth, and a line that does not parse (two appends
    /// interleaved on a network file system) is passed over.
    fn read_heads(&self) -> std::collections::HashMap<String, Head> {
        let Ok(bytes) = read_capped(&self.heads_path(), 1 << 30) else {
            return std::collections::HashMap::new();
        };
        bytes
            .par_split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(|l| serde_json::from_slice::<Head>(l).ok())
            .map(|h| (h.id.clone(), h))
            .collect()
    }

    /// Add a completed record's head to `runs/heads.jsonl`: one line, one `write` in
    /// append mode, after the record file (whose size and time it holds).
    pub fn add_head(&self, rec: &RunRecord) -> Result<()> {
        let Some(line) = self.head_line(rec)? else {
            return Ok(());
        };
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.heads_path())?;
        f.write_all(&line)?;
        Ok(())
    }

    /// Write `runs/heads.jsonl` anew from the record files: a head for each completed
    /// record (its file says so, as when its run wrote it), none for the rest. After a
    /// store is copied (`cp -a`, `rsync -a`: every record another inode), listings read
    /// every record whole until this is done; `pipe verify` does it. A run completing
    /// meanwhile may lose its head (it is then read whole, as without one). Returns how
    /// many heads were written.
    pub fn reindex_heads(&self) -> Result<usize> {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                Some(
                    name.strip_suffix(".json")
                        .filter(|i| is_run_id(i))?
                        .to_string(),
                )
            })
            .collect();
        let lines: Vec<Vec<u8>> = ids
            .par_iter()
            .filter_map(|id| {
                let bytes = read_capped(&self.record_path(id), JSON_CAP).ok()?;
                let rec: RunRecord = serde_json::from_slice(&bytes).ok()?;
                if rec.id != *id || rec.state == RunState::Running {
                    return None;
                }
                self.head_line(&rec).ok().flatten()
            })
            .collect();
        let mut lines = lines;
        lines.sort();
        // Written only when it says something else (a sound store is left as it was).
        let mut now: Vec<Vec<u8>> = read_capped(&self.heads_path(), 1 << 30)
            .unwrap_or_default()
            .split_inclusive(|&b| b == b'\n')
            .map(|l| l.to_vec())
            .collect();
        now.sort();
        if now != lines {
            write_atomic(&self.heads_path(), &lines.concat())?;
        }
        Ok(lines.len())
    }

    /// `rec`'s line of `runs/heads.jsonl`, stamped with its record file as it is now
    /// (`None`: no record file).
    fn head_line(&self, rec: &RunRecord) -> Result<Option<Vec<u8>>> {
        let Some((size, mtime_ns, ino)) = file_stamp(&self.record_path(&rec.id)) else {
            return Ok(None);
        };
        let head = Head {
            size,
            mtime_ns,
            ino,
            id: rec.id.clone(),
            pipeline: rec.pipeline.clone(),
            sweep: rec.sweep.clone(),
            point: rec.point.clone(),
            started: rec.started.clone(),
            seconds: rec.seconds,
            state: rec.state,
            remark: rec.remark.clone(),
            previous: rec.previous.clone(),
            changes: rec.changes.clone(),
            metrics: rec
                .headline()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            outputs: rec
                .stages
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.output.clone()?)))
                .collect(),
            executor: rec.executor.clone(),
            backend: rec.backend.clone(),
            device: rec.device.clone(),
        };
        let mut line = serde_json::to_vec(&head)?;
        line.push(b'\n');
        Ok(Some(line))
    }

    fn add_annotations(&self, rec: &mut RunRecord) {
        for a in self.annotations(&rec.id) {
            match a.kind.as_str() {
                "tag" => rec.tags.push(a.text),
                _ => rec.notes.push(a.text),
            }
        }
    }

    /// A Slurm run's record as its jobs completed it (`runs/jobs/`), once every stage
    /// handed to a job has ended: what `pipe push` sends for it (a teammate has no
    /// `runs/jobs/` of this cluster). The file is left as it is (its jobs, or a promotion
    /// job, may still write beside it). `None` while any stage is queued, running or
    /// awaiting a decision.
    pub fn settled(&self, id: &str) -> Result<Option<RunRecord>> {
        let rec = self
            .read_record(id, false)
            .map_err(|w| anyhow::anyhow!("{w}"))?;
        let open = rec
            .stages
            .iter()
            .any(|s| matches!(s.state.as_str(), "queued" | "running" | AWAITING));
        Ok((rec.state != RunState::Running && !open).then_some(rec))
    }

    /// Whether a record of that id is there (read or not).
    pub fn has(&self, id: &str) -> bool {
        is_run_id(id) && self.record_path(id).exists()
    }

    /// One record by its id, as it stands now.
    pub fn get(&self, id: &str) -> Result<RunRecord> {
        if !self.record_path(id).exists() {
            bail!("no run `{id}` in {}", self.dir.display());
        }
        self.read_record(id, self.notes_path(id).exists())
            .map_err(|w| anyhow::anyhow!("{w}"))
    }

    fn read_record(&self, id: &str, annotated: bool) -> Result<RunRecord, String> {
        let path = self.record_path(id);
        let damaged =
            |why: String| format!("{}: damaged run record skipped ({why})", path.display());
        let read = || -> Result<RunRecord, String> {
            let bytes = read_capped(&path, JSON_CAP).map_err(|e| damaged(e.to_string()))?;
            let rec: RunRecord =
                serde_json::from_slice(&bytes).map_err(|e| damaged(e.to_string()))?;
            match rec.id == id {
                true => Ok(rec),
                false => Err(damaged(format!("it names itself `{}`", rec.id))),
            }
        };
        let mut rec = read()?;
        if rec.state == RunState::Running {
            let live = self.live_path(id);
            let interrupt = |rec: &mut RunRecord| {
                rec.state = RunState::Interrupted;
                for s in &mut rec.stages {
                    if s.state == "running" {
                        s.state = "interrupted".into();
                    }
                }
            };
            let held = is_held(&live);
            // Not held: its process may have completed the record between the read above
            // and the lock's check (it writes the record, then removes the lock file, then
            // unlocks). The record as it is now is the one to judge.
            if !held {
                if let Ok(now) = read() {
                    rec = now;
                }
            }
            if rec.state != RunState::Running {
                // Completed in the meantime.
            } else if rec.executor != "slurm" {
                if !held {
                    interrupt(&mut rec);
                }
            } else if held {
                // Its submitter is still at it (submitting, or waiting with `--wait`): the
                // record does not name its jobs yet, so they cannot complete it.
            } else if live.exists()
                && rec
                    .stages
                    .iter()
                    .all(|s| s.job.is_none() && s.key.is_none())
            {
                // The submitter stopped before it completed the record (no stage has a
                // key or a job yet: as `begin` wrote it); one that completed it removed
                // its lock file first.
                interrupt(&mut rec);
            } else {
                self.assemble_jobs(&mut rec);
            }
        }
        if annotated {
            self.add_annotations(&mut rec);
        }
        Ok(rec)
    }

    /// A Slurm run's record completed from what its jobs recorded (`runs/jobs/`): each
    /// queued stage takes its job's entry; the run is done when every job is, failed when
    /// one failed, interrupted when one was killed.
    fn assemble_jobs(&self, rec: &mut RunRecord) {
        let mut all_done = true;
        let mut failed = None;
        let mut killed = false;
        // Stages whose job has said nothing yet: queued, or ended before it could say.
        let mut silent: Vec<usize> = Vec::new();
        for (i, s) in rec.stages.iter_mut().enumerate() {
            let Some(job) = s.job.clone() else { continue };
            if s.state == AWAITING {
                // Its promotion job decides whether it runs (and amends the record).
                all_done = false;
                if let Ok(Some(e)) = read_json::<StageEntry>(&self.job_path(&job)) {
                    let held = is_held(&self.dir.join("jobs").join(format!("{job}.live")));
                    if e.state == "running" && !held {
                        killed = true;
                    } else if e.state == "failed" {
                        failed = Some(format!("the halving decision failed: {}", e.summary));
                    }
                }
                continue;
            }
            if !matches!(s.state.as_str(), "queued" | "running") {
                continue;
            }
            match read_json::<StageEntry>(&self.job_path(&job)) {
                Ok(Some(e)) => {
                    let live = e.state == "running";
                    let held = is_held(&self.dir.join("jobs").join(format!("{job}.live")));
                    *s = StageEntry {
                        job: Some(job),
                        name: s.name.clone(),
                        ..e
                    };
                    if live && !held {
                        s.state = "interrupted".into();
                        killed = true;
                    }
                    if s.state == "failed" {
                        failed = Some(format!("stage `{}` failed: {}", s.name, s.summary));
                    }
                    if !matches!(s.state.as_str(), "ran" | "cached" | "fetched") {
                        all_done = false;
                    }
                }
                _ => {
                    all_done = false;
                    silent.push(i);
                }
            }
        }
        if !silent.is_empty() {
            // A job cancelled while it waited (its dependents with it), or one that failed
            // before it could write its entry, never will: Slurm says it ended.
            let jobs: Vec<String> = silent
                .iter()
                .filter_map(|&i| rec.stages[i].job.clone())
                .collect();
            let states = slurm_job_states(&jobs);
            for (&i, state) in silent.iter().zip(states) {
                let s = &mut rec.stages[i];
                let Some(job) = s.job.clone() else { continue };
                // Ended since its entry was looked for: it may have written it meanwhile.
                if let Ok(Some(e)) = read_json::<StageEntry>(&self.job_path(&job)) {
                    if matches!(e.state.as_str(), "ran" | "cached" | "fetched") {
                        *s = StageEntry {
                            job: Some(job),
                            name: s.name.clone(),
                            ..e
                        };
                        continue;
                    }
                }
                let why = match state {
                    JobState::Failed(why) => format!("Slurm says {why}"),
                    JobState::Done => "it completed".to_string(),
                    JobState::Gone => "Slurm no longer knows it".to_string(),
                    JobState::Queued(_) | JobState::Running(_) | JobState::Unknown => continue,
                };
                s.state = "failed".into();
                s.summary = format!("job {job} ended without recording how it went ({why})");
                failed.get_or_insert_with(|| format!("stage `{}` failed: {}", s.name, s.summary));
            }
        }
        if let Some(f) = failed {
            rec.state = RunState::Failed;
            rec.error = Some(f);
        } else if killed {
            rec.state = RunState::Interrupted;
        } else if all_done {
            rec.state = RunState::Done;
            rec.metrics = metrics_from(
                &rec.stages,
                &self
                    .dir
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("artifacts"),
            );
        }
    }

    fn annotations(&self, id: &str) -> Vec<Annotation> {
        read_capped(&self.notes_path(id), JSON_CAP)
            .unwrap_or_default()
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice(l).ok())
            .collect()
    }

    /// Add a tag or a note to a run, beside its record (the record is not changed).
    pub fn annotate(&self, id: &str, kind: &str, text: &str) -> Result<()> {
        self.get(id)?;
        let a = Annotation {
            kind: kind.to_string(),
            text: text.to_string(),
            at: now_rfc3339(),
        };
        let mut line = serde_json::to_string(&a)?;
        line.push('\n');
        use std::io::{Read, Seek, Write};
        let path = self.notes_path(id);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // A line left torn (a crash in the middle of an append) would swallow this one:
        // it starts on a line of its own.
        let mut last = [0u8; 1];
        let torn = f.seek(std::io::SeekFrom::End(-1)).is_ok()
            && f.read_exact(&mut last).is_ok()
            && last[0] != b'\n';
        if torn {
            line.insert(0, '\n');
        }
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// What a command line's run reference names: a run id, `PIPELINE~N` (the N-th run
    /// before the latest of PIPELINE; `~0` the latest), or `PIPELINE@ID-PREFIX`.
    /// `Ok(None)` when `arg` is no run reference (a pipeline, a sweep point).
    pub fn resolve(&self, arg: &str, listing: Option<&Listing>) -> Result<Option<RunRecord>> {
        if is_run_id(arg) {
            return self.get(arg).map(Some);
        }
        let (pipeline, pick) = if let Some((p, n)) = arg.rsplit_once('~') {
            let Ok(n) = n.parse::<usize>() else {
                return Ok(None);
            };
            (p, Pick::Back(n))
        } else if let Some((p, prefix)) = arg.rsplit_once('@') {
            let looks = prefix.len() >= 4
                && prefix.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-')
                && prefix.as_bytes()[0].is_ascii_digit()
                && prefix.len() <= 20;
            if !looks {
                return Ok(None);
            }
            (p, Pick::Prefix(prefix))
        } else {
            return Ok(None);
        };
        let owned;
        let listing = match listing {
            Some(l) => l,
            None => {
                owned = self.list();
                &owned
            }
        };
        let runs: Vec<&RunRecord> = listing
            .runs
            .iter()
            .filter(|r| r.pipeline == pipeline)
            .collect();
        // A damaged record may be a run of `pipeline` (its pipeline cannot be read): one
        // that started after the run picked could be the one meant.
        let unsure = |picked: &RunRecord| -> Result<()> {
            let after: Vec<&String> = listing
                .damaged
                .iter()
                .filter(|d| match pick {
                    // Ids order by the second only (then 16 random bits): one of the
                    // same second may have started after it too.
                    Pick::Back(_) => d.get(..15) >= picked.id.get(..15),
                    Pick::Prefix(prefix) => d.starts_with(prefix),
                })
                .collect();
            match after.first() {
                None => Ok(()),
                Some(d) => bail!(
                    "`{arg}`: the run record {} is damaged, and may be a run of `{pipeline}` that `{arg}` would name (run {} otherwise); name the run by its id, or mend or remove the record (`pipe verify` names what is wrong)",
                    self.record_path(d).display(),
                    picked.id
                ),
            }
        };
        match pick {
            Pick::Back(n) => match runs.get(n) {
                Some(r) => {
                    unsure(r)?;
                    Ok(Some((*r).clone()))
                }
                None if runs.is_empty() => {
                    bail!("`{arg}`: no run of `{pipeline}` is recorded in this store")
                }
                None => bail!(
                    "`{arg}`: `{pipeline}` has {} recorded run(s); `~{}` is the oldest{}",
                    runs.len(),
                    runs.len() - 1,
                    match listing.damaged.len() {
                        0 => String::new(),
                        n => format!(
                            " ({n} damaged record(s) not counted: `pipe verify` names them)"
                        ),
                    }
                ),
            },
            Pick::Prefix(prefix) => {
                let hits: Vec<&&RunRecord> =
                    runs.iter().filter(|r| r.id.starts_with(prefix)).collect();
                match hits.as_slice() {
                    [one] => {
                        unsure(one)?;
                        Ok(Some((**one).clone()))
                    }
                    [] if runs.is_empty() => Ok(None),
                    [] => bail!("`{arg}`: no run of `{pipeline}` has an id starting `{prefix}`"),
                    many => bail!(
                        "`{arg}`: {} runs of `{pipeline}` start `{prefix}` ({}); give more of the id",
                        many.len(),
                        many.iter().take(5).map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                }
            }
        }
    }

    /// Mark in each record the stages whose artifacts are gone (`pipe gc` collected them).
    pub fn mark_collected(&self, runs: &mut [RunRecord]) {
        let artifacts = self
            .dir
            .parent()
            .unwrap_or(Path::new("."))
            .join("artifacts");
        // One listing of the artifacts, not a stat per stage of every record.
        let present: std::collections::HashSet<String> = fs::read_dir(&artifacts)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for r in runs {
            r.collected = r
                .stages
                .iter()
                .filter(|s| s.output.as_ref().is_some_and(|o| !present.contains(o)))
                .map(|s| s.name.clone())
                .collect();
        }
    }

    /// Check every record: it parses, names itself, its manifest texts are present and
    /// match their hash. One line per problem.
    pub fn verify(&self) -> (usize, Vec<String>) {
        let l = self.list();
        let mut problems = l.warnings.clone();
        // The listings' cache, made again from the records read above (a copied store's
        // heads no longer match its files). A store this user may not write keeps its own.
        if let Err(e) = self.reindex_heads() {
            problems.push(format!(
                "{}: not written again: {e:#}",
                self.heads_path().display()
            ));
        }
        for r in &l.runs {
            if let Err(e) = self.sources(r) {
                problems.push(format!("{e:#}"));
            }
        }
        (l.runs.len(), problems)
    }

    /// Write a Slurm job's entry (`running` when it starts, its outcome when it ends),
    /// holding `runs/jobs/<job>.live` while the job runs.
    pub fn job_started(&self, job: &str, entry: &StageEntry) -> Result<fs::File> {
        let live = self.dir.join("jobs").join(format!("{job}.live"));
        fs::create_dir_all(live.parent().expect("a folder"))?;
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&live)?;
        f.lock()?;
        write_json_atomic(&self.job_path(job), entry)?;
        Ok(f)
    }

    /// A Slurm job's final entry.
    pub fn job_ended(&self, job: &str, entry: &StageEntry) -> Result<()> {
        write_json_atomic(&self.job_path(job), entry)
    }
}

/// A line of `runs/heads.jsonl`: a completed record without its bulk, and its file's
/// size and time when it was written.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    size: u64,
    mtime_ns: i128,
    /// The record file's inode: a record put in its place (a copy that kept its size and
    /// time, `cp -p` or `rsync -t`) is another file, read whole. 0 in heads from before.
    #[serde(default)]
    ino: u64,
    id: String,
    pipeline: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sweep: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    point: Option<String>,
    started: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    state: RunState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remark: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    changes: Vec<String>,
    /// The headline metrics only.
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
    /// Stage -> artifact, for the stages that made one.
    #[serde(default)]
    outputs: Vec<(String, String)>,
    executor: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    device: String,
}

impl Head {
    /// The partial record it stands for (see [`Journal::list_heads`]).
    fn into_record(self) -> RunRecord {
        RunRecord {
            format: RECORD_FORMAT,
            id: self.id,
            pipeline: self.pipeline,
            sweep: self.sweep,
            point: self.point,
            manifest: String::new(),
            project: String::new(),
            sources: String::new(),
            sets: Vec::new(),
            config_json: crate::outcome::record::config_json(&BTreeMap::new()),
            stages: self
                .outputs
                .into_iter()
                .map(|(name, output)| StageEntry {
                    name,
                    kind: String::new(),
                    key: None,
                    output: Some(output),
                    state: "made".into(),
                    seconds: 0.0,
                    summary: String::new(),
                    job: None,
                })
                .collect(),
            metrics: self.metrics,
            previous: self.previous,
            changes: self.changes,
            git: None,
            host: HostInfo::default(),
            device: self.device,
            backend: self.backend,
            version: String::new(),
            command: Vec::new(),
            executor: self.executor,
            started: self.started,
            ended: None,
            seconds: self.seconds,
            state: self.state,
            error: None,
            remark: self.remark,
            pid: 0,
            tags: Vec::new(),
            notes: Vec::new(),
            collected: Vec::new(),
            partial: true,
        }
    }
}

/// A file's size and modification time (nanoseconds), or `None` when it is not there.
pub(crate) fn file_stamp(path: &Path) -> Option<(u64, i128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path).ok()?;
    let t = m.modified().ok()?;
    let ns = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Some((m.len(), ns, m.ino()))
}

/// [`file_stamp`] of the file `name` in the open folder `dir` (`fstatat`).
fn stamp_in(dir: &fs::File, name: &str) -> Option<(u64, i128, u64)> {
    use std::os::fd::AsRawFd;
    let c = std::ffi::CString::new(name).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is an open descriptor, `c` a NUL-terminated name, `st` room for one
    // `stat` that the call fills when it returns 0.
    let rc = unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), 0) };
    if rc != 0 {
        return None;
    }
    // SAFETY: fstatat returned 0, so it wrote the whole struct.
    let st = unsafe { st.assume_init() };
    let ns = st.st_mtime as i128 * 1_000_000_000 + st.st_mtime_nsec as i128;
    Some((st.st_size as u64, ns, st.st_ino))
}

enum Pick<'a> {
    Back(usize),
    Prefix(&'a str),
}

use super::store::lock_is_held as is_held;

/// A stage entry's state while a halving promotion job (its `job`) has not yet decided
/// whether the point goes on to it.
pub const AWAITING: &str = "awaiting";

/// A stage entry's state when halving stopped its point before it.
pub const PRUNED: &str = "pruned";

/// `20261206-041500-3fa9`: UTC start time and 16 random bits.
fn new_id() -> String {
    let t = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!("[year][month][day]-[hour][minute][second]");
    format!(
        "{}-{:04x}",
        t.format(&fmt).unwrap_or_default(),
        rand::random::<u16>()
    )
}

/// `lr 0.01 -> 0.005` for each key whose value differs (at most 8, then `+N more`).
pub fn config_changes(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
            out.push(format!(
                "{} {} -> {}",
                RunRecord::short_key(k),
                show(x),
                show(y)
            ));
        }
    }
    if out.len() > 8 {
        let more = out.len() - 8;
        out.truncate(8);
        out.push(format!("+{more} more"));
    }
    out
}

/// The training devices and backends of a pipeline (`cpu`, `native`; several joined by
/// `,`).
fn devices_of(p: &Pipeline) -> (String, String) {
    let mut devices = Vec::new();
    let mut backends = Vec::new();
    for s in p.stages.values() {
        if let Some((_, _, d, b)) = s.config.training() {
            if let Some(d) = d {
                let d = format!("{d:?}").to_lowercase();
                if !devices.contains(&d) {
                    devices.push(d);
                }
            }
            if let Some(b) = b {
                let b = b.to_string();
                if !backends.contains(&b) {
                    backends.push(b);
                }
            }
        }
    }
    (devices.join(","), backends.join(","))
}

/// This machine: host name, CPU model, cores.
pub fn host_info() -> HostInfo {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let hostname = if rc == 0 {
        let end = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    HostInfo {
        hostname,
        cpu,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

/// The git commit of the folder's repository and whether tracked files changed (`None`
/// outside a repository, or without git): one `git status --porcelain=v2 --branch`.
fn git_info(dir: &Path) -> Option<GitInfo> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "status",
            "--porcelain=v2",
            "--branch",
            "--untracked-files=no",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let commit = text
        .lines()
        .find_map(|l| l.strip_prefix("# branch.oid "))?
        .trim()
        .to_string();
    if commit == "(initial)" {
        return None;
    }
    let dirty = text.lines().any(|l| !l.starts_with('#'));
    Some(GitInfo { commit, dirty })
}

/// A record's stages as outcomes: those with an artifact as cached (what `predict` and
/// `export` take a past run's model from).
pub fn outcomes_of(rec: &RunRecord) -> Vec<StageOutcome> {
    rec.stages
        .iter()
        .filter_map(|s| {
            let kind: StageKind =
                serde_json::from_value(serde_json::Value::String(s.kind.clone())).ok()?;
            let made =
                s.output.is_some() && matches!(s.state.as_str(), "ran" | "cached" | "fetched");
            let mut o = StageOutcome::new(
                &s.name,
                kind,
                if made {
                    StageState::Cached
                } else {
                    StageState::Waiting
                },
            );
            o.key = s.key.as_deref().and_then(crate::ids::StageKey::parse);
            o.output = s.output.as_deref().and_then(crate::ids::ContentHash::parse);
            o.summary = s.summary.clone();
            o.seconds = s.seconds;
            Some(o)
        })
        .collect()
}

/// A stage entry from how the decision walk (or a run) left it.
pub fn entry_of(o: &StageOutcome) -> StageEntry {
    StageEntry {
        name: o.name.clone(),
        kind: o.kind.to_string(),
        key: o.key.as_ref().map(|k| k.to_string()),
        output: o.output.as_ref().map(|h| h.to_string()),
        state: match o.state {
            StageState::Stale => "not-run".to_string(),
            s => s.as_str().to_string(),
        },
        seconds: o.seconds,
        summary: o.summary.clone(),
        job: None,
    }
}

/// The final metrics of what a run's stages made (`artifacts`: the store's artifact
/// folder): per training stage its last epoch's `train_loss`, `train_acc`, `val_loss`,
/// `val_acc`; per evaluation its ranks; and as `show` names them, `train.loss` ...
/// `val.acc` of the last training stage and `rank<k>` of the first evaluation.
pub fn metrics_from(stages: &[StageEntry], artifacts: &Path) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut first_eval = true;
    for s in stages {
        // A content hash, or no folder of the store (a record pulled from elsewhere may
        // say anything).
        let Some(out) = s.output.as_deref().and_then(crate::ids::ContentHash::parse) else {
            continue;
        };
        let dir = artifacts.join(out.as_str());
        let kind: Option<StageKind> =
            serde_json::from_value(serde_json::Value::String(s.kind.clone())).ok();
        match kind {
            Some(k) if k.is_training() => {
                if let Some(last) = stages::train::last_epoch(&dir) {
                    for (name, v) in [
                        ("train_loss", last.train_loss),
                        ("train_acc", last.train_acc),
                        ("val_loss", last.val_loss),
                        ("val_acc", last.val_acc),
                    ] {
                        m.insert(format!("{}.{name}", s.name), v);
                    }
                    for (name, v) in [
                        ("ema_val_loss", last.ema_val_loss),
                        ("ema_val_acc", last.ema_val_acc),
                    ] {
                        if let Some(v) = v {
                            m.insert(format!("{}.{name}", s.name), v);
                        }
                    }
                    m.insert("train.loss".into(), last.train_loss);
                    m.insert("train.acc".into(), last.train_acc);
                    // The model's (the moving average when the stage keeps one), as
                    // `pipe show` and halving read them.
                    m.insert(
                        "val.loss".into(),
                        last.ema_val_loss.unwrap_or(last.val_loss),
                    );
                    m.insert("val.acc".into(), last.ema_val_acc.unwrap_or(last.val_acc));
                }
            }
            Some(StageKind::Evaluate) => {
                for (k, v) in stages::evaluate::read_ranks(&dir) {
                    m.insert(format!("{}.rank{k}", s.name), v);
                    if first_eval {
                        m.insert(format!("rank{k}"), v);
                    }
                }
                first_eval = false;
            }
            _ => {}
        }
    }
    m.retain(|_, v| v.is_finite());
    m
}

/// A run being recorded: its record is rewritten (atomically) as stages start and end,
/// and completed by [`Recording::finish`]. Dropped without finishing (a panic), it is
/// completed as failed.
pub struct Recording {
    journal: Journal,
    record: RunRecord,
    live: Option<fs::File>,
    git: Option<std::thread::JoinHandle<Option<GitInfo>>>,
    t0: Instant,
}

impl Recording {
    /// The run's id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// The record as it stands.
    pub fn record(&self) -> &RunRecord {
        &self.record
    }

    /// Replace the stage entries (as decided or as they went), and write the record.
    pub fn update(&mut self, stages: &[StageEntry]) {
        merge_entries(&mut self.record.stages, stages);
        let _ = self.write(false);
    }

    /// A stage starts running (`done`: the stages settled before it): its key, so a
    /// reader finds its live curves.
    pub fn stage_running(&mut self, done: &[StageEntry], name: &str, key: Option<&str>) {
        merge_entries(&mut self.record.stages, done);
        if let Some(s) = self.record.stages.iter_mut().find(|s| s.name == name) {
            s.state = "running".into();
            s.key = key.map(str::to_string);
        }
        let _ = self.write(false);
    }

    fn write(&self, sync: bool) -> Result<()> {
        let path = self.journal.record_path(&self.record.id);
        let bytes = serde_json::to_vec(&self.record)?;
        if sync {
            write_atomic(&path, &bytes)
        } else {
            // Intermediate states need no fsync: the final one has it.
            let tmp =
                self.journal
                    .dir
                    .join(format!(".{}.{}.tmp", self.record.id, std::process::id()));
            fs::write(&tmp, &bytes)
                .and_then(|()| fs::rename(&tmp, &path))
                .with_context(|| format!("cannot write {}", path.display()))
        }
    }

    /// Complete the record: the stages as they went, the final metrics (read from the
    /// store's `artifacts`), the error of a failed run. A run handed to Slurm stays
    /// `running` (`detached`): its jobs complete it.
    pub fn finish(
        mut self,
        stages: &[StageEntry],
        artifacts: &Path,
        error: Option<String>,
        remark: Option<String>,
        detached: bool,
    ) -> Result<RunRecord> {
        merge_entries(&mut self.record.stages, stages);
        if error.is_some() {
            for s in &mut self.record.stages {
                if s.state == "running" {
                    s.state = "failed".into();
                }
            }
        }
        self.record.git = self.git.take().and_then(|g| g.join().ok()).flatten();
        self.record.metrics = metrics_from(&self.record.stages, artifacts);
        self.record.remark = remark;
        if !detached {
            self.record.ended = Some(now_rfc3339());
            self.record.seconds = Some(self.t0.elapsed().as_secs_f64());
            self.record.state = if error.is_some() {
                RunState::Failed
            } else {
                RunState::Done
            };
        }
        self.record.error = error;
        self.write(true)?;
        if self.record.state != RunState::Running {
            // What listings read instead of ten thousand files; the record stays the truth.
            let _ = self.journal.add_head(&self.record);
        }
        self.release();
        Ok(self.record.clone())
    }

    /// Remove the lock file, then let go of its lock: a reader that finds the record
    /// running and no lock file knows that its process completed it (a run handed to
    /// Slurm: its jobs complete it).
    fn release(&mut self) {
        if let Some(f) = self.live.take() {
            let _ = fs::remove_file(self.journal.live_path(&self.record.id));
            drop(f);
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.live.is_some() && self.record.state == RunState::Running {
            self.record.state = RunState::Failed;
            self.record.error = Some("pipe stopped before completing the record".into());
            self.record.ended = Some(now_rfc3339());
            let _ = self.write(true);
            self.release();
        }
    }
}

/// Entries by name replace the recorded ones.
fn merge_entries(into: &mut Vec<StageEntry>, from: &[StageEntry]) {
    for e in from {
        match into.iter_mut().find(|s| s.name == e.name) {
            Some(s) => {
                let job = s.job.take();
                *s = e.clone();
                if s.job.is_none() {
                    s.job = job;
                }
            }
            None => into.push(e.clone()),
        }
    }
}

/// How Slurm says each job stands: one `squeue` for those still queued or running, a
/// question each for the others (ended: how). A job's name is not checked: a stage may
/// wait on a job another pipeline submitted (same recipe), named after that pipeline. In
/// this crate's unit tests, the answers the test set ([`tests::SLURM`]), when it set any.
fn slurm_job_states(jobs: &[String]) -> Vec<JobState> {
    #[cfg(test)]
    if let Some(said) = tests::SLURM.with(|m| m.borrow().clone()) {
        return jobs
            .iter()
            .map(|j| said.get(j).cloned().unwrap_or(JobState::Unknown))
            .collect();
    }
    // An answer is reused for a moment: a dashboard's live pages ask about the same jobs
    // several times a second, and each question is an `squeue` (and an `sacct` per job
    // that ended).
    /// When a list of jobs was asked about, and what Slurm said of each.
    type Asked = (Instant, Vec<String>, Vec<JobState>);
    static ASKED: std::sync::Mutex<Vec<Asked>> = std::sync::Mutex::new(Vec::new());
    const FRESH: std::time::Duration = std::time::Duration::from_secs(2);
    if let Ok(asked) = ASKED.lock() {
        if let Some((_, _, said)) = asked
            .iter()
            .find(|(at, j, _)| j.as_slice() == jobs && at.elapsed() < FRESH)
        {
            return said.clone();
        }
    }
    let ids: Vec<&str> = jobs.iter().map(String::as_str).collect();
    let live = super::slurm::queued_or_running(&ids);
    let said: Vec<JobState> = jobs
        .iter()
        .map(|j| match &live {
            Some(l) if l.contains(j) => JobState::Queued(String::new()),
            _ => super::slurm::slurm_state(j, None),
        })
        .collect();
    if let Ok(mut asked) = ASKED.lock() {
        asked.retain(|(at, _, _)| at.elapsed() < FRESH);
        asked.push((Instant::now(), jobs.to_vec(), said.clone()));
    }
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record file written by hand.
    fn write_record(
        j: &Journal,
        id: &str,
        pipeline: &str,
        executor: &str,
        state: &str,
        stages: Vec<serde_json::Value>,
    ) {
        let rec = serde_json::json!({
            "format": RECORD_FORMAT, "id": id, "pipeline": pipeline, "manifest": "m",
            "project": "p", "sources": "", "version": "0", "executor": executor,
            "host": {"hostname": "h", "cpu": "c", "cores": 1},
            "started": "2026-12-07T10:00:00Z", "state": state, "pid": 1,
            "stages": stages,
        });
        fs::write(j.record_path(id), rec.to_string()).unwrap();
    }

    thread_local! {
        /// What Slurm says of each job id, for [`super::slurm_job_states`] (None: ask it).
        pub(super) static SLURM: std::cell::RefCell<Option<std::collections::HashMap<String, JobState>>> =
            const { std::cell::RefCell::new(None) };
    }

    fn slurm_says(jobs: &[(&str, JobState)]) {
        SLURM.with(|m| {
            *m.borrow_mut() = Some(
                jobs.iter()
                    .map(|(j, s)| (j.to_string(), s.clone()))
                    .collect(),
            )
        });
    }

    #[test]
    fn a_slurm_record_reads_running_while_submitted_and_interrupted_when_its_submitter_died() {
        slurm_says(&[("7", JobState::Queued(String::new()))]);
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let j = Journal::of(&store);
        fs::create_dir_all(&j.dir).unwrap();
        let begun =
            || vec![serde_json::json!({"name": "train", "kind": "train", "state": "not-run"})];
        let state = |id: &str| j.get(id).unwrap().state;
        // As `begin` wrote it, its submitter holding the lock: running.
        let id = "20261207-100000-aaaa";
        write_record(&j, id, "exp", "slurm", "running", begun());
        let lock = fs::File::create(j.live_path(id)).unwrap();
        lock.lock().unwrap();
        assert_eq!(state(id), RunState::Running);
        // The submitter gone, the lock file left, no stage keyed or handed to a job.
        drop(lock);
        assert_eq!(state(id), RunState::Interrupted);
        // Every stage cached, nothing to submit (an older pipe left its lock file there):
        // done.
        let id = "20261207-100000-bbbb";
        let cached =
            serde_json::json!({"name": "train", "kind": "train", "state": "cached", "key": "k"});
        write_record(&j, id, "exp", "slurm", "running", vec![cached]);
        fs::File::create(j.live_path(id)).unwrap();
        assert_eq!(state(id), RunState::Done);
        // Handed to a job that has not written its entry yet: running.
        let id = "20261207-100000-cccc";
        let queued = serde_json::json!({"name": "train", "kind": "train", "state": "queued", "key": "k", "job": "7"});
        write_record(&j, id, "exp", "slurm", "running", vec![queued.clone()]);
        assert_eq!(state(id), RunState::Running);
        // Its job cancelled before it started (Slurm says so), or forgotten by Slurm: it
        // will never write that entry: failed, naming the job.
        for (said, why) in [
            (JobState::Failed("CANCELLED".into()), "Slurm says CANCELLED"),
            (JobState::Gone, "Slurm no longer knows it"),
        ] {
            slurm_says(&[("7", said)]);
            let r = j.get(id).unwrap();
            assert_eq!(r.state, RunState::Failed);
            assert_eq!(
                r.stages[0].summary,
                format!("job 7 ended without recording how it went ({why})")
            );
        }
        slurm_says(&[("7", JobState::Unknown)]);
        assert_eq!(state(id), RunState::Running, "Slurm not answering");
        // A run in this process, its lock not held: interrupted.
        let id = "20261207-100000-dddd";
        write_record(&j, id, "exp", "in-process", "running", begun());
        fs::File::create(j.live_path(id)).unwrap();
        assert_eq!(state(id), RunState::Interrupted);
    }

    #[test]
    fn a_promotion_job_finds_the_record_that_awaits_it_whatever_ran_since() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let j = Journal::of(&store);
        fs::create_dir_all(j.dir.join("last")).unwrap();
        let record = |id: &str, executor: &str, state: &str, job: Option<&str>| {
            let mut stage =
                serde_json::json!({"name": "drop", "kind": "lr-drop", "state": "cached"});
            if let Some(job) = job {
                stage["state"] = AWAITING.into();
                stage["job"] = job.into();
            }
            write_record(&j, id, "hv@a", executor, state, vec![stage]);
        };
        // Submitted (its drop awaits job 100), then the point run here, then submitted
        // again (awaiting job 200); the hint names the run here.
        record("20261207-100000-aaaa", "slurm", "running", Some("100"));
        record("20261207-110000-bbbb", "in-process", "done", None);
        record("20261207-120000-cccc", "slurm", "running", Some("200"));
        fs::write(j.last_path("hv@a"), "20261207-110000-bbbb").unwrap();
        let job = |me: Option<&str>| j.awaiting_job("hv@a", me.map(str::to_string));
        assert_eq!(job(Some("100")).as_deref(), Some("20261207-100000-aaaa"));
        assert_eq!(job(Some("200")).as_deref(), Some("20261207-120000-cccc"));
        assert_eq!(job(Some("300")), None);
        assert_eq!(job(None), None);
        // The hint right: taken as it is.
        fs::write(j.last_path("hv@a"), "20261207-120000-cccc").unwrap();
        assert_eq!(job(None).as_deref(), Some("20261207-120000-cccc"));
        assert_eq!(job(Some("100")).as_deref(), Some("20261207-100000-aaaa"));
        assert_eq!(j.awaiting_job("hv@b", Some("100".into())), None);
    }

    #[test]
    fn a_record_put_in_place_with_its_size_and_time_kept_is_read_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let j = Journal::of(&store);
        fs::create_dir_all(&j.dir).unwrap();
        let id = "20261208-100000-aaaa";
        write_record(&j, id, "exp", "local", "done", Vec::new());
        j.add_head(&j.get(id).unwrap()).unwrap();
        let listed = || {
            j.list_heads()
                .runs
                .into_iter()
                .find(|r| r.id == id)
                .unwrap()
        };
        let head = listed();
        assert!(head.partial, "listed from its head");
        assert_eq!(head.pipeline, "exp");
        // Another record file (one byte changed) put in its place with the same size and
        // time, as `cp -p` or `rsync -t` would.
        let path = j.record_path(id);
        let when = fs::metadata(&path).unwrap().modified().unwrap();
        let text = fs::read_to_string(&path)
            .unwrap()
            .replace("\"exp\"", "\"exq\"");
        let other = j.dir.join("other.json.tmp");
        fs::write(&other, &text).unwrap();
        fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(when)
            .unwrap();
        fs::rename(&other, &path).unwrap();
        let (size, ns, _) = file_stamp(&path).unwrap();
        assert_eq!(
            (size as usize, ns),
            (text.len(), {
                let d = when.duration_since(std::time::UNIX_EPOCH).unwrap();
                d.as_nanos() as i128
            })
        );
        let now = listed();
        assert!(!now.partial, "read whole");
        assert_eq!(now.pipeline, "exq");
        // Heads made again from the files (what `pipe verify` does after a copy): listed
        // from its head again, the new one. A running record gets none.
        write_record(
            &j,
            "20261208-100000-bbbb",
            "exp",
            "local",
            "running",
            Vec::new(),
        );
        assert_eq!(j.reindex_heads().unwrap(), 1);
        let written = fs::metadata(j.heads_path()).unwrap().modified().unwrap();
        assert_eq!(j.reindex_heads().unwrap(), 1);
        assert_eq!(
            fs::metadata(j.heads_path()).unwrap().modified().unwrap(),
            written,
            "the same heads are not written again"
        );
        let again = listed();
        assert!(again.partial, "listed from its new head");
        assert_eq!(again.pipeline, "exq");
        let heads = fs::read_to_string(j.heads_path()).unwrap();
        assert_eq!(heads.lines().count(), 1, "{heads}");
        assert!(heads.contains(id), "{heads}");
    }

    #[test]
    fn a_stamp_by_name_in_the_folder_is_the_stamp_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("20261206-041500-3fa9.json");
        std::fs::write(&f, b"{\"a\": 1}").unwrap();
        let folder = fs::File::open(dir.path()).unwrap();
        let by_name = stamp_in(&folder, "20261206-041500-3fa9.json");
        assert!(by_name.is_some_and(|(size, ns, ino)| size == 8 && ns > 0 && ino > 0));
        assert_eq!(by_name, file_stamp(&f));
        assert_eq!(stamp_in(&folder, "missing.json"), None);
    }
}
