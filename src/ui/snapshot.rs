//! What the runs page shows, gathered once and kept: every run of the project's manifests
//! with its row (as `pipe show --json` has them), and the sweeps. The server rebuilds it in
//! the background (see `server`), so serving the runs page costs only rendering.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::engine::runs::RunEntry;
use crate::engine::Project;
use crate::manifest::Sweep;
use crate::report::show::{self, Row};

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
}

impl Snapshot {
    /// Gather the runs of `project`'s manifests (read-only).
    pub fn build(project: &Project) -> Result<Snapshot> {
        let t = Instant::now();
        let r = project.runs(&[], &[])?;
        let mut rows = r.rows;
        // As `pipe show` does: with sweep points among the rows, mark the best.
        if r.runs.iter().filter(|x| x.sweep.is_some()).count() > 1 {
            show::mark_best(&mut rows, None);
        }
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
