//! What the runs page shows, gathered once and kept: every run of the project's manifests
//! with its row (as `pipe show --json` has them), and the sweeps. The server rebuilds it in
//! the background (see `server`) when what it was built from changed ([`Stamp`]), so
//! serving the runs page costs only rendering, and a store at rest costs nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::engine::runs::RunEntry;
use crate::engine::Project;
use crate::manifest::Sweep;
use crate::report::show::Row;

/// The project's runs at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The runs, in manifest order.
    pub runs: Vec<RunEntry>,
    /// Their rows (the best of a sweep marked as `pipe show` marks it).
    pub rows: Vec<Row>,
    /// The sweeps.
    pub sweeps: Vec<Sweep>,
    /// Manifests that did not load, with why.
    pub skipped: Vec<String>,
    /// Run name -> index.
    pub by_name: HashMap<String, usize>,
    /// How long gathering took.
    pub took: Duration,
    /// What it was built from, looked at before building.
    pub stamp: Stamp,
}

/// What a snapshot is built from, as a few `stat`s: every file under `pipelines/` (size
/// and modification time), and the store's folders whose entries a run, `gc` or
/// `verify` adds, renames or removes (a folder's time moves with its entries). Equal
/// stamps: nothing the runs page shows has changed, except inside a dataset folder or a
/// file a manifest `extends` from outside `pipelines/` (the server rebuilds now and then
/// for those).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stamp(Vec<(PathBuf, u64, i128, u64)>);

impl Stamp {
    /// The stamp of `project` now.
    pub fn of(project: &Project) -> Stamp {
        let mut entries = Vec::new();
        stat_tree(&project.pipelines, 4, &mut entries);
        let store = &project.cache;
        for sub in [
            "",
            "artifacts",
            "keys",
            "sealed",
            "damaged",
            "state",
            "sweeps",
            "runs",
        ] {
            stat_into(&store.join(sub), &mut entries);
        }
        entries.sort();
        Stamp(entries)
    }
}

/// `path`'s size, modification time (ns) and inode into `out`, when it is there.
fn stat_into(path: &Path, out: &mut Vec<(PathBuf, u64, i128, u64)>) {
    if let Some((size, ns, ino)) = crate::engine::journal::file_stamp(path) {
        out.push((path.to_path_buf(), size, ns, ino));
    }
}

/// [`stat_into`] for `dir` and everything under it, `depth` folders down at most (hidden
/// entries passed over).
fn stat_tree(dir: &Path, depth: usize, out: &mut Vec<(PathBuf, u64, i128, u64)>) {
    stat_into(dir, out);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => stat_tree(&path, depth - 1, out),
            Ok(t) if t.is_dir() => {}
            _ => stat_into(&path, out),
        }
    }
}

impl Snapshot {
    /// Gather the runs of `project`'s manifests (read-only).
    pub fn build(project: &Project) -> Result<Snapshot> {
        let t = Instant::now();
        let stamp = Stamp::of(project);
        let mut r = project.runs(&[], &[])?;
        // As `pipe show` does: each sweep's best point.
        r.mark_best(None);
        let rows = r.rows;
        let by_name = r
            .runs
            .iter()
            .enumerate()
            .map(|(i, x)| (x.name.clone(), i))
            .collect();
        Ok(Snapshot {
            runs: r.runs,
            rows,
            sweeps: r.sweeps,
            skipped: r.skipped,
            by_name,
            took: t.elapsed(),
            stamp,
        })
    }

    /// The run named `name`, with its row.
    pub fn run(&self, name: &str) -> Option<(&RunEntry, &Row)> {
        let i = *self.by_name.get(name)?;
        Some((&self.runs[i], &self.rows[i]))
    }

    /// The sweep named `name`.
    pub fn sweep(&self, name: &str) -> Option<&Sweep> {
        self.sweeps.iter().find(|s| s.name == name)
    }

    /// The rows of a sweep's points, in point order.
    pub fn sweep_rows(&self, name: &str) -> Vec<Row> {
        self.runs
            .iter()
            .zip(&self.rows)
            .filter(|(r, _)| r.sweep.as_deref() == Some(name))
            .map(|(_, row)| row.clone())
            .collect()
    }

    /// (sweep name, points) for the runs page.
    pub fn sweep_list(&self) -> Vec<(String, usize)> {
        self.sweeps
            .iter()
            .map(|s| (s.name.clone(), s.points.len()))
            .collect()
    }

    /// The metric a sweep's page compares: its halving metric, else the first evaluate
    /// stage's rank-1 if any point has one, else the final val accuracy.
    pub fn sweep_metric(&self, s: &Sweep) -> String {
        if let Some(h) = &s.halving {
            return h.metric.to_string();
        }
        let rows = self.sweep_rows(&s.name);
        if rows.iter().any(|r| r.metrics().contains_key("rank1")) {
            "rank1".into()
        } else {
            "val.acc".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_moves_with_manifests_and_the_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let project = Project::at(dir.path().to_path_buf(), Some(dir.path().join(".pipe")));
        std::fs::create_dir_all(project.pipelines.join("base")).unwrap();
        std::fs::create_dir_all(project.cache.join("artifacts")).unwrap();
        std::fs::create_dir_all(project.cache.join("scratch")).unwrap();
        std::fs::write(project.pipelines.join("a.toml"), "x = 1\n").unwrap();
        std::fs::write(project.pipelines.join("base/b.toml"), "y = 1\n").unwrap();
        let s0 = Stamp::of(&project);
        assert_eq!(s0, Stamp::of(&project), "nothing changed");
        // Two manifest folders and two files, the store's root and its artifacts folder.
        assert_eq!(s0.0.len(), 6, "{:?}", s0.0);

        // A training's scratch is not part of the runs page.
        std::fs::write(project.cache.join("scratch/history.json"), "[]").unwrap();
        assert_eq!(s0, Stamp::of(&project));

        // A base file rewritten in place, same size: its time moved.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(project.pipelines.join("base/b.toml"), "y = 2\n").unwrap();
        let s1 = Stamp::of(&project);
        assert_ne!(s0, s1, "an edited base file");

        // An artifact published (a folder renamed into `artifacts/`).
        std::fs::create_dir(project.cache.join("scratch/out")).unwrap();
        std::fs::rename(
            project.cache.join("scratch/out"),
            project.cache.join("artifacts/abc"),
        )
        .unwrap();
        let s2 = Stamp::of(&project);
        assert_ne!(s1, s2, "an artifact published");

        // A journal appearing, then a record in it.
        std::fs::create_dir(project.cache.join("runs")).unwrap();
        let s3 = Stamp::of(&project);
        assert_ne!(s2, s3);
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(project.cache.join("runs/r.json"), "{}").unwrap();
        assert_ne!(s3, Stamp::of(&project), "a record written");
    }
}
